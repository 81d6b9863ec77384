"""The startup sync's quick paths give the general rules' answers: ``parse_address`` on a bare
dotted quad, the classifier's leading-byte table (addresses and ranges), ``pack_value`` on an
IPv4 address, and the table's inline id index."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers.crowdsec import Decision
from pipeline.core.addresses import (
    _RANK,
    INTERNAL_CLASSES,
    AddrClass,
    Classification,
    Classifier,
    Network,
    _strip,
    format_network,
    k3s_defaults,
    make_network,
    parse_address,
    parse_network,
    same_prefix,
)
from pipeline.core.decision_table import DecisionTable, pack_value, unpack_value

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

V4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
V6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
NEAR = st.sampled_from(
    ["10.42.0.7", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4:80", "[::1]:80", "fe80::1%eth0", "01.2.3.4",
     "1.2.3", "1.2.3.4.5", "", "::ffff:10.0.0.1", "1.2.3.4%x", "a\x00b", "256.1.1.1", "١.2.3.4"]
)  # fmt: skip
TEXT = st.one_of(V4, V6, NEAR, st.text(alphabet="0123456789.:/%[] abf", max_size=20))


def general_address(text: str) -> tuple[int, int] | None:
    """``parse_address`` without its dotted-quad shortcut."""
    s = _strip(text)
    if not s:
        return None
    try:
        if ":" in s:
            raw = socket.inet_pton(socket.AF_INET6, s)
            if raw[:12] == b"\x00" * 10 + b"\xff\xff":
                return 4, int.from_bytes(raw[12:], "big")
            return 6, int.from_bytes(raw, "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, s), "big")
    except (OSError, ValueError):
        return None


@FAST
@given(TEXT)
def test_parse_address_shortcut(text: str) -> None:
    assert parse_address(text) == general_address(text)


def cidr(version: int, n: int, length: int) -> str:
    addr = ipaddress.IPv6Address(n) if version == 6 else ipaddress.IPv4Address(n)
    return str(ipaddress.ip_network(addr).supernet(new_prefix=length))


@st.composite
def networks(draw: st.DrawFn) -> list[Network]:
    nets = list(k3s_defaults())
    for version, most, bits in ((4, 8, 32), (6, 4, 128)):
        for _ in range(draw(st.integers(0, most))):
            text = cidr(version, draw(st.integers(0, 2**bits - 1)), draw(st.integers(0, bits)))
            nets.append(make_network(text, draw(st.sampled_from(list(AddrClass))), "test"))
    return nets


def linear(c: Classifier, text: str) -> Classification:
    """``classify`` as the plain rule: the first network (most specific, then by harm) that
    shares the address's leading bits."""
    parsed = parse_address(text)
    if parsed is None:
        return Classification(AddrClass.INVALID, None)
    for net in c.networks:
        if same_prefix(net.version, net.prefix, parsed[0], parsed[1], net.length):
            return Classification(net.cls, net)
    return Classification(AddrClass.PUBLIC, None)


def linear_range(c: Classifier, text: str) -> Classification:
    """``classify_range`` as the plain rule: the most harmful overlapped internal network,
    else the class of the range's first address."""
    parsed = parse_network(text)
    if parsed is None:
        return Classification(AddrClass.INVALID, None)
    version, prefix, length = parsed
    best = None
    for net in c.networks:
        overlap = same_prefix(net.version, net.prefix, version, prefix, min(length, net.length))
        harmful = best is None or _RANK[net.cls] < _RANK[best.cls]
        if net.cls in INTERNAL_CLASSES and overlap and harmful:
            best = net
    if best is not None:
        return Classification(best.cls, best)
    return linear(c, format_network(version, prefix, length).partition("/")[0])


@FAST
@given(networks(), st.lists(st.one_of(V4, V6, NEAR), max_size=8))
def test_leading_byte_table_gives_the_plain_answer(nets: list[Network], texts: list[str]) -> None:
    c = Classifier(nets)
    for text in texts:
        assert c.classify(text) == linear(c, text)


@FAST
@given(networks(), st.lists(st.tuples(st.one_of(V4, V6), st.integers(0, 128)), max_size=8))
def test_ranges_by_the_leading_byte_table(
    nets: list[Network], ranges: list[tuple[str, int]]
) -> None:
    c = Classifier(nets)
    for addr, length in ranges:
        text = f"{addr}/{length if ':' in addr else length % 33}"
        assert c.classify_range(text) == linear_range(c, text)


def general_pack(value: str) -> bytes | None:
    """``pack_value`` without its IPv4 shortcut."""
    addr, sep, plen = value.partition("/")
    length = 0
    if sep:
        if not (0 < len(plen) <= 3 and plen.isascii() and plen.isdigit()):
            return None
        length = int(plen)
        if length > 255 or str(length) != plen:
            return None
    six = ":" in addr
    family = socket.AF_INET6 if six else socket.AF_INET
    try:
        raw = socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return None
    if socket.inet_ntop(family, raw) != addr:
        return None
    kind = (5 if sep else 4) if six else (3 if sep else 2)
    return bytes((kind, length)) + raw


@FAST
@given(st.one_of(TEXT, st.builds(lambda a, n: f"{a}/{n}", V4, st.integers(0, 40))))
def test_pack_value_shortcut(value: str) -> None:
    packed = pack_value(value)
    assert packed == general_pack(value)
    if packed is not None:
        assert unpack_value(packed) == value


@FAST
@given(st.lists(st.integers(-3, 2**40), max_size=60, unique=True))
def test_ids_indexed_inline_are_found(ids: list[int]) -> None:
    """Ids that collide, grow the index or sit outside the column all stay findable, also after
    some rows are removed and their slots reused."""
    table = DecisionTable()
    rows = {}
    for n, ident in enumerate(ids):
        rows[ident] = table.add(
            Decision(ident, "o", "s", "Ip", f"10.0.{n // 256}.{n % 256}", "ban", 5.0), 3, None
        )
    for ident in ids[::3]:
        table.remove(rows.pop(ident))
    for ident in ids[::3]:
        rows[ident] = table.add(Decision(ident, "o", "s", "Ip", "1.2.3.4", "ban", None), 3, None)
    for ident, row in rows.items():
        assert table.find_id(ident) == row
        assert table.ident(row) == ident
    assert table.find_id(2**41) == -1
