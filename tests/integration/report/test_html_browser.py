"""``auditor replay --format html`` rendered by a real headless Chromium (Debian's `chromium`),
offline: the screenshot must show the chart (both entrypoints' lines, the masking band) and the
findings (severity badges). Also writes docs/replay-report.png, the README's picture, when
AUDITOR_REGEN_SCREENSHOT=1.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

SCREENSHOT = ROOT / "docs" / "replay-report.png"
SIZE = (1200, 1800)
# Colours the page draws with (sinks/html_report.py): series 1 and 2, the critical badge.
WEB_BLUE = (0x1F, 0x77, 0xB4)
WEBSECURE_ORANGE = (0xFF, 0x7F, 0x0E)
CRITICAL_RED = (0xB0, 0x00, 0x20)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium not found: install the Debian package `chromium` (make deps)")
    return path


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(
            bytes(line)
            if channels == 3
            else bytes(v for j in range(0, stride, 4) for v in line[j : j + 3])
        )
        prev = line
    return width, height, rows


def count_near(rows: list[bytes], rgb: tuple[int, int, int], tol: int = 12) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), 3):
            if all(abs(row[i + k] - rgb[k]) <= tol for k in range(3)):
                n += 1
    return n


def count_band(rows: list[bytes]) -> int:
    """Pixels of the masking band: pink (#f4b6b6 at 75 % over the plot's #fafafa)."""
    n = 0
    for row in rows:
        for i in range(0, len(row), 3):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if r > 235 and 175 <= g <= 205 and abs(g - b) <= 6:
                n += 1
    return n


@pytest.fixture(name="shot", scope="module")
def _shot(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[bytes]]:
    chromium = _chromium()
    tmp = tmp_path_factory.mktemp("html")
    page = tmp / "report.html"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("auditor")),
            "replay", "examples/demo/access.log", "--decisions", "examples/demo/decisions.json",
            "--format", "html", "--fail-on", "never",
        ],
        capture_output=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    page.write_bytes(proc.stdout)
    png = tmp / "report.png"
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            # Offline: any fetch would fail, so the picture proves the page needs none.
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
            f"--window-size={SIZE[0]},{SIZE[1]}", f"--screenshot={png}", page.as_uri(),
        ],
        capture_output=True, timeout=120, check=True, cwd=tmp,
        env={**os.environ, "HOME": str(tmp)},
    )  # fmt: skip
    if os.environ.get("AUDITOR_REGEN_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(png.read_bytes())
    width, height, rows = decode_png(png.read_bytes())
    assert (width, height) == SIZE
    return proc.stdout.decode(), rows


def test_screenshot_shows_the_chart(shot: tuple[str, list[bytes]]) -> None:
    _, rows = shot
    chart = rows[150:700]  # the chart sits under the title and the counts
    assert count_near(chart, WEB_BLUE) > 400  # web's line
    assert count_near(chart, WEBSECURE_ORANGE) > 400  # websecure's line
    assert count_band(chart) > 50_000  # the shaded masking windows


def test_screenshot_shows_the_findings(shot: tuple[str, list[bytes]]) -> None:
    page, rows = shot
    assert count_near(rows[700:], CRITICAL_RED, tol=8) > 300  # CRITICAL badges
    demo = ["examples/demo/access.log", "--decisions", "examples/demo/decisions.json"]
    report = subprocess.run(
        [str(Path(sys.executable).with_name("auditor")), "replay", *demo, "-o", "json",
         "--fail-on", "never"],
        capture_output=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    findings = json.loads(report.stdout)["findings"]
    assert len(findings) >= 4
    assert page.count('class="finding"') == len(findings)  # every finding of the report


def test_the_page_loads_nothing(shot: tuple[str, list[bytes]]) -> None:
    page, _ = shot
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "default-src 'none'" in page
    urls = [u for u in page.split('"') if u.startswith(("http://", "https://", "//"))]
    assert urls == ["http://www.w3.org/2000/svg"]  # a namespace name, never fetched
