"""EnvelopeDecoder: CRI and docker json-file envelopes from the corpus, partials, size caps."""

from __future__ import annotations

import json

import pytest

from parsers import records as R
from parsers.envelope import Envelope, EnvelopeDecoder, detect
from parsers.records import ParseStats, SkipReason
from parsers.traefik import TraefikParser
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.feed import SourceAuditor
from tests.support.paths import CORPUS


def corpus_lines(name: str) -> list[bytes]:
    data = (CORPUS / name).read_bytes()
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


def unwrap(
    lines: list[bytes], kind: Envelope = Envelope.AUTO, **kw: int
) -> tuple[list[bytes], ParseStats, EnvelopeDecoder]:
    dec = EnvelopeDecoder(kind, **kw)
    stats = ParseStats()
    return dec.unwrap(lines, stats), stats, dec


def cri(stream: str, tag: str, content: bytes, ts: str = "2024-04-16T06:21:39.0Z") -> bytes:
    return f"{ts} {stream} {tag} ".encode() + content


def docker(stream: str, log: str) -> bytes:
    return json.dumps(
        {"log": log, "stream": stream, "time": "2016-10-20T18:39:20.57606443Z"}
    ).encode()


# -- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cri-lines.log", Envelope.CRI),
        ("dockerjson-lines.log", Envelope.DOCKER),
        ("traefik-json-v3.jsonl", Envelope.RAW),
        ("traefik-json-v2.jsonl", Envelope.RAW),
        ("traefik-clf.log", Envelope.RAW),
        ("traefik-stdout-mixed.log", Envelope.RAW),
        ("traefik-applog-text.log", Envelope.RAW),
    ],
)
def test_detect_from_first_line(name: str, expected: Envelope) -> None:
    assert detect(corpus_lines(name)[0]) is expected


@pytest.mark.parametrize(
    "line",
    [
        b'{"log": 5, "stream": "stdout"}',  # log not a string
        b'{"log": "x"}',  # no stream key
        b'{"log": "x", "stream": "stdout"',  # truncated
        b'{"RequestPath":"/log","ClientHost":"1.2.3.4","x":"log"}',  # Traefik line quoting "log"
        b"2016-10-06T00:17:09Z stdin F x",  # stream must be stdout/stderr
        b"2016-10-06T00:17:09Z stdout X x",  # tag must be P/F
        b"",
        b"\xff\xfe",
    ],
)
def test_detect_falls_back_to_raw(line: bytes) -> None:
    assert detect(line) is Envelope.RAW


def test_auto_settles_on_the_batch_first_content_line() -> None:
    # One rule for every caller: the batch's first non-blank line decides, and the whole batch
    # is then read in that envelope (its blank lines are empty CRI lines, as replay counts them).
    out, stats, dec = unwrap([b"", b"  ", cri("stdout", "F", b"hello")])
    assert out == [b"hello"]
    assert dec.kind is Envelope.CRI
    assert stats.skipped[SkipReason.EMPTY] == 2


def test_auto_blank_only_batch_passes_through_and_stays_open() -> None:
    dec = EnvelopeDecoder()
    stats = ParseStats()
    blank = [b"", b"  "]
    assert dec.settle(blank) is False
    assert dec.decode(blank, stats) is blank
    assert dec.unwrap(blank, stats) == blank
    assert (dec.kind, stats.lines) == (Envelope.AUTO, 0)
    assert dec.decode([docker("stdout", "x\n")], stats) == [b"x"]
    assert dec.kind is Envelope.DOCKER


def test_decode_hands_raw_batches_back_uncopied() -> None:
    lines = [b'{"ClientHost":"1.2.3.4"}', b"plain text"]
    for kind in (Envelope.RAW, Envelope.AUTO):
        dec = EnvelopeDecoder(kind)
        assert dec.decode(lines, ParseStats()) is lines
        assert dec.kind is Envelope.RAW
        assert dec.settle([cri("stdout", "F", b"later")]) is False  # settled for good


# -- CRI ----------------------------------------------------------------------------------------


def test_cri_fluent_bit_interleaved_partials_reassembled_per_stream() -> None:
    lines = corpus_lines("cri-lines.log")[30:46]  # fluent-bit multiline.c cri_input[]
    out, stats, _ = unwrap(lines, Envelope.CRI)
    assert out == [
        b"1a. some multiline log",
        b"1b. some multiline log",
        b"2a. another multiline log",
        b"2b. another multiline log",
        b"3a. non multiline 1",
        b"4a. non multiline 2",
        b"3b. non multiline 1",
        b"4b. non multiline 2",
    ]
    assert stats.skipped_total == 0


def test_cri_kubelet_doc_example_partial_waits_for_its_stream() -> None:
    lines = corpus_lines("cri-lines.log")[13:15]  # stdout P, then stderr F
    dec = EnvelopeDecoder(Envelope.CRI)
    stats = ParseStats()
    assert dec.unwrap(lines, stats) == [b"log content 2"]
    # The stdout partial completes with the next stdout F, in a later batch.
    assert dec.unwrap([cri("stderr", "F", b"other")], stats) == [b"other"]
    assert dec.unwrap([cri("stdout", "F", b" end")], stats) == [b"log content 1 end"]


def test_cri_vector_cases() -> None:
    out, _, dec = unwrap(corpus_lines("cri-lines.log")[46:50], Envelope.CRI)
    assert out == [b"The content of the log entry 1", b"Last line of the log entry 2"]
    # The two stdout P pieces are still waiting for their F.
    stats = ParseStats()
    assert dec.unwrap([cri("stdout", "F", b"!")], stats) == [
        b"First line of log entry 2Second line of the log entry 2!"
    ]


def test_cri_whole_corpus_file_no_envelope_errors() -> None:
    lines = corpus_lines("cri-lines.log")
    assert len(lines) == 50
    out, stats, _ = unwrap(lines)
    assert stats.skipped_total == 0
    # Offsets (+01:00, +00:00), Z and variable fractions are all accepted. Every F line yields
    # one output; the 12 P lines merge into a later F of their stream (or stay open: vector's).
    p_lines = sum(1 for ln in lines if b" P " in ln[:45])
    assert p_lines == 12
    assert len(out) == 50 - p_lines
    # Line 2 (stderr P) waits, so line 7 (envoy text) is the sixth output.
    assert out[5] == (
        b'[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 '
        b'"10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" '
        b'"tcp://10.0.2.1:80"'
    )


def test_cri_extra_tags_and_empty_content() -> None:
    out, stats, _ = unwrap(
        [
            cri("stdout", "F:extra:tags", b"x").replace(b"F:extra:tags ", b"F:extra:tags "),
            b"2024-04-16T06:21:39.0Z stdout F",
            cri("stdout", "P", b"ab"),
            b"2024-04-16T06:21:39.0Z stdout F",
        ],
        Envelope.CRI,
    )
    assert out == [b"x", b"", b"ab"]
    assert stats.skipped_total == 0


def test_cri_bad_lines_counted() -> None:
    out, stats, _ = unwrap(
        [
            b"not a cri line",
            b"",
            b"   ",
            b'{"log":"x\\n","stream":"stdout"}',
            cri("stdout", "F", b"ok"),
        ],
        Envelope.CRI,
    )
    assert out == [b"ok"]
    assert stats.skipped[SkipReason.BAD_ENVELOPE] == 2
    assert stats.skipped[SkipReason.EMPTY] == 2
    assert stats.lines == 4


def test_cri_invalid_utf8_content_reaches_parser_as_bytes() -> None:
    out, stats, _ = unwrap([cri("stdout", "F", b'{"ClientHost":"\xff"}')], Envelope.CRI)
    assert out == [b'{"ClientHost":"\xff"}']
    recs = TraefikParser().parse(out, stats)
    assert recs == []
    assert stats.skipped[SkipReason.INVALID_UTF8] == 1


def test_cri_partial_cap_overflow() -> None:
    piece = b"x" * 60
    lines = [
        cri("stdout", "P", piece),
        cri("stdout", "P", piece),  # 120 > 100: overflow, counted once
        cri("stderr", "F", b"stderr unaffected"),
        cri("stdout", "P", piece),  # rest of the oversized message is dropped...
        cri("stdout", "F", b"tail"),  # ...up to and including its F
        cri("stdout", "F", b"next message"),
    ]
    out, stats, dec = unwrap(lines, Envelope.CRI, max_merged_bytes=100)
    assert out == [b"stderr unaffected", b"next message"]
    assert stats.skipped[SkipReason.PARTIAL_OVERFLOW] == 1
    assert stats.skipped_total == 1
    assert stats.lines == 1
    assert dec._partial == {}
    assert dec._overflow == set()


def test_cri_partial_cap_overflow_on_final_piece() -> None:
    lines = [
        cri("stdout", "P", b"x" * 60),
        cri("stdout", "F", b"y" * 60),
        cri("stdout", "F", b"ok"),
    ]
    out, stats, _ = unwrap(lines, Envelope.CRI, max_merged_bytes=100)
    assert out == [b"ok"]
    assert stats.skipped[SkipReason.PARTIAL_OVERFLOW] == 1


def test_cri_merged_exactly_at_cap_is_kept() -> None:
    lines = [cri("stdout", "P", b"x" * 50), cri("stdout", "F", b"y" * 50)]
    out, stats, _ = unwrap(lines, Envelope.CRI, max_merged_bytes=100)
    assert out == [b"x" * 50 + b"y" * 50]
    assert stats.skipped_total == 0


def test_cri_runaway_partials_memory_bounded() -> None:
    dec = EnvelopeDecoder(Envelope.CRI, max_merged_bytes=1024)
    stats = ParseStats()
    for _ in range(100):
        dec.unwrap([cri("stdout", "P", b"z" * 512)] * 20, stats)
        held = sum(len(p) for parts in dec._partial.values() for p in parts)
        assert held <= 1024 + 512
    assert stats.skipped[SkipReason.PARTIAL_OVERFLOW] == 1


# -- docker json-file -----------------------------------------------------------------------------


def test_docker_full_lines_match_stdlib_decoding() -> None:
    lines = corpus_lines("dockerjson-lines.log")[:11]  # every `log` ends with \n
    out, stats, _ = unwrap(lines)
    assert out == [json.loads(ln)["log"].removesuffix("\n").encode() for ln in lines]
    assert stats.skipped_total == 0
    # Line 5: stringified JSON inside `log` comes out as the JSON text.
    assert json.loads(out[4])["text"].startswith("quoted ")


def test_docker_fluent_bit_partials_per_stream() -> None:
    lines = corpus_lines("dockerjson-lines.log")[11:16]
    dec = EnvelopeDecoder()
    stats = ParseStats()
    assert dec.unwrap(lines, stats) == [b"aa", b"aa", b"ddee"]
    assert dec.kind is Envelope.DOCKER
    assert dec.unwrap([docker("stdout", "cc\n")], stats) == [b"bbcc"]


def test_docker_kubelet_doc_partials_without_newline() -> None:
    lines = corpus_lines("dockerjson-lines.log")[16:18]
    dec = EnvelopeDecoder(Envelope.DOCKER)
    stats = ParseStats()
    assert dec.unwrap(lines, stats) == []
    assert dec.unwrap([docker("stderr", "\n"), docker("stdout", " more\n")], stats) == [
        b"content 2",
        b"content 1 more",
    ]


def test_docker_ingress_nginx_lines_unwrap_and_parse_as_common() -> None:
    out, stats, _ = unwrap(corpus_lines("dockerjson-lines.log")[:3])
    recs = TraefikParser().parse(out, stats)
    assert [r[R.CLIENT] for r in recs] == ["192.168.61.205"] * 3
    assert stats.common == 3


def test_docker_bad_lines_counted() -> None:
    out, stats, _ = unwrap(
        [
            b"",
            b"garbage",
            b'{"log": 5, "stream": "stdout"}',
            b'{"log": "x\\n"',
            b'{"log":"\xff\\n","stream":"stdout"}',
            b'{"log":"\\ud800\\n","stream":"stdout"}',
            b"[1,2]",
            docker("stdout", "ok\n"),
        ],
        Envelope.DOCKER,
    )
    assert out == [b"ok"]
    assert stats.skipped[SkipReason.EMPTY] == 1
    assert stats.skipped[SkipReason.BAD_ENVELOPE] == 6
    assert stats.lines == 7


def test_docker_partial_cap_overflow() -> None:
    lines = [docker("stdout", "a" * 70), docker("stdout", "b" * 70), docker("stdout", "c\n")]
    lines.append(docker("stdout", "fine\n"))
    out, stats, _ = unwrap(lines, Envelope.DOCKER, max_merged_bytes=100)
    assert out == [b"fine"]
    assert stats.skipped[SkipReason.PARTIAL_OVERFLOW] == 1


# -- through the hot path ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_traefik_json_split_by_containerd_is_reassembled_and_parsed() -> None:
    """A node agent reads CRI files where containerd split a long Traefik line into P pieces."""
    engine = Engine(EngineConfig(), Classifier(k3s_defaults()), _Clock())
    src = SourceAuditor(engine, "traefik.log", Envelope.AUTO)
    lines: list[bytes] = []
    for i, line in enumerate(corpus_lines("traefik-json-v3.jsonl")):
        ts = f"2026-01-14T09:45:{i:02d}.1Z"
        a, b, c = line[:100], line[100:200], line[200:]
        lines += [cri("stdout", "P", a, ts), cri("stderr", "F", b"level=info msg=x", ts)]
        lines += [cri("stdout", "P", b, ts), cri("stdout", "F", c, ts)]
    stats = src.feed(lines)
    assert stats.json == 4
    assert stats.skipped[SkipReason.NOT_ACCESS_LOG] == 4  # the interleaved stderr lines
    assert engine.traffic.whole().total == 4
    assert "10.0.0.50" in engine.traffic.whole().clients
