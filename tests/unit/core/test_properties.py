"""Property tests (hypothesis): the classifier against Python's ``ipaddress`` as an oracle, and the
parsers and engine never raising on hostile input.

``ipaddress`` is used here only, as the independent reference; the code under test never imports
it (pipeline/core/addresses.py is the one parser of addresses).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from parsers.crowdsec import DecisionDelta, DecisionFormatError, decision_from_obj, parse_decisions
from parsers.envelope import Envelope, EnvelopeDecoder
from parsers.records import ParseStats
from parsers.traefik import TraefikParser, client_of
from pipeline.core.addresses import (
    INTERNAL_CLASSES,
    WELL_KNOWN,
    AddrClass,
    Classifier,
    Network,
    k3s_defaults,
    make_network,
    parse_address,
    parse_network,
)
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.findings import Severity

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
K3S = Classifier(k3s_defaults())
RANK = {cls: i for i, cls in enumerate(AddrClass)}

# Text that looks like addresses often enough to reach every branch of the parsers.
ADDRISH = st.text(alphabet="0123456789abcdefABCDEF.:[]%/ ,\t-xX²٣①０", max_size=48)
ANY_TEXT = st.one_of(
    st.text(),
    ADDRISH,
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])),
)
V4 = st.integers(0, 2**32 - 1)
V6 = st.integers(0, 2**128 - 1)


# -- classifier: never raises -------------------------------------------------------------------


@FAST
@given(ANY_TEXT)
@example("\x00")
@example("1.2.3.4\x00")
@example("[")
@example("%")
def test_classify_never_raises(text: str) -> None:
    got = K3S.classify(text)
    assert got.cls in AddrClass
    assert got.internal is (got.cls in INTERNAL_CLASSES)
    if got.cls is AddrClass.INVALID:
        assert parse_address(text) is None


@FAST
@given(ANY_TEXT)
@example("10.0.0.0/²")
@example("10.0.0.0/①")
@example("::ffff:1.2.3.4/٣")
def test_classify_range_never_raises(text: str) -> None:
    got = K3S.classify_range(text)
    assert got.cls in AddrClass
    if got.cls is AddrClass.INVALID:
        assert parse_network(text) is None


@FAST
@given(
    st.builds(
        lambda a, n: f"{a}/{n}", st.sampled_from(["10.0.0.0", "::", "::ffff:1.2.3.4"]), ANY_TEXT
    )
)
def test_parse_network_lengths_never_raise(text: str) -> None:
    parsed = parse_network(text)
    if parsed is not None:
        version, _, length = parsed
        assert 0 <= length <= (32 if version == 4 else 128)


# -- classifier: mapped addresses ----------------------------------------------------------------


@FAST
@given(V4)
def test_mapped_form_classifies_like_plain(n: int) -> None:
    plain = str(ipaddress.IPv4Address(n))
    hi, lo = n >> 16, n & 0xFFFF
    forms = [
        f"::ffff:{plain}",
        f"::FFFF:{plain}",
        f"::ffff:{hi:x}:{lo:x}",
        f"0:0:0:0:0:ffff:{plain}",
        f"[::ffff:{plain}]:443",
        f"{plain}:8080",
    ]
    want = K3S.classify(plain)
    for form in forms:
        got = K3S.classify(form)
        assert got.cls is want.cls, form
        assert got.network == want.network
        assert parse_address(form) == (4, n)


# -- classifier vs the ipaddress oracle ----------------------------------------------------------


def _oracle_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _oracle_class(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: list[Network]
) -> AddrClass:
    """Most specific containing network wins; equal lengths go to the more harmful class."""
    hits = [n for n in networks if ip.version == n.version and ip in ipaddress.ip_network(n.cidr)]
    if not hits:
        return AddrClass.PUBLIC
    best = max(hits, key=lambda n: (n.length, -RANK[n.cls]))
    return best.cls


@st.composite
def networks(draw: st.DrawFn) -> list[Network]:
    out = []
    internal = sorted(INTERNAL_CLASSES - {AddrClass.PRIVATE}, key=RANK.__getitem__)
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                (draw(V4), draw(st.integers(0, 32))), strict=False
            )
        else:
            net = ipaddress.IPv6Network((draw(V6), draw(st.integers(0, 128))), strict=False)
        cls = draw(st.sampled_from([*internal, AddrClass.PRIVATE]))
        out.append(make_network(str(net), cls, "hypothesis"))
    return out


@st.composite
def addresses(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["v4", "v6", "mapped", "near-known"]))
    if kind == "v4":
        return str(ipaddress.IPv4Address(draw(V4)))
    if kind == "v6":
        return str(ipaddress.IPv6Address(draw(V6)))
    if kind == "mapped":
        return f"::ffff:{ipaddress.IPv4Address(draw(V4))}"
    known = draw(st.sampled_from([*WELL_KNOWN, *k3s_defaults()]))
    base = ipaddress.ip_network(known.cidr)
    offset = draw(st.integers(-3, 3)) % base.num_addresses
    edge = draw(st.sampled_from([base.network_address + offset, base.broadcast_address - offset]))
    return str(edge)


@FAST
@given(addresses(), networks())
@example("10.42.0.1", [])
@example("::ffff:10.42.0.1", [])
@example("172.17.0.1", [])
@example("100.64.0.0", [])
@example("fd7a:115c:a1e0::", [])
def test_classify_matches_ipaddress_oracle(text: str, nets: list[Network]) -> None:
    classifier = Classifier([*k3s_defaults(), *nets])
    want = _oracle_class(_oracle_ip(text), list(classifier.networks))
    got = classifier.classify(text)
    assert got.cls is want
    if got.network is not None:
        assert _oracle_ip(text) in ipaddress.ip_network(got.network.cidr)


@FAST
@given(addresses())
def test_well_known_answers_agree_with_ipaddress(text: str) -> None:
    ip = _oracle_ip(text)
    got = K3S.classify(text).cls
    if ip.is_loopback:
        assert got is AddrClass.LOOPBACK
    if ip.is_link_local:
        assert got is AddrClass.LINK_LOCAL
    if ip.is_multicast:
        assert got is AddrClass.RESERVED
    if got is AddrClass.PUBLIC:
        # Public may still be special-purpose (TEST-NET, benchmarking, 6to4...), never RFC 1918,
        # loopback, link-local, CGNAT or ULA.
        assert not (ip.is_loopback or ip.is_link_local or ip.is_multicast)
        for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"):
            net = ipaddress.ip_network(cidr)
            assert not (ip.version == net.version and ip in net)


@FAST
@given(st.text(alphabet="0123456789abcdefABCDEF.:", max_size=45))
def test_parse_address_accepts_what_ipaddress_accepts(text: str) -> None:
    assume(text.count(":") != 1)  # one colon is read as v4:port, which ipaddress rejects
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        assert parse_address(text) is None
        return
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    want = (4, int(mapped)) if mapped is not None else (ip.version, int(ip))
    assert parse_address(text) == want


@FAST
@given(V6, st.sampled_from(["", "%eth0", "%25", "%1"]), st.booleans(), st.booleans())
def test_ipv6_textual_forms(n: int, zone: str, bracket: bool, upper: bool) -> None:
    ip = ipaddress.IPv6Address(n)
    assume(ip.ipv4_mapped is None)
    for text in (ip.compressed, ip.exploded):
        t = text.upper() if upper else text
        t += zone
        if bracket:
            t = f"[{t}]:443"
        assert parse_address(t) == (6, n)


@st.composite
def internal_net_and_subnet(draw: st.DrawFn) -> tuple[Network, str]:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    length = draw(st.integers(0, bits))
    value = draw(V4 if version == 4 else V6)
    base = (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)(
        (value, length), strict=False
    )
    cls = draw(st.sampled_from(sorted(INTERNAL_CLASSES, key=RANK.__getitem__)))
    sub_len = draw(st.integers(length, bits))
    sub_value = int(base.network_address) | (
        draw(V4 if version == 4 else V6) & ((1 << (bits - length)) - 1)
    )
    sub = (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)(
        (sub_value, sub_len), strict=False
    )
    assert sub.subnet_of(base)  # type: ignore[arg-type]
    # From /96 on, a network inside ::ffff:0:0/96 holds only IPv4-mapped addresses and is read
    # as the IPv4 network it maps (as CrowdSec reads it; tests/unit/core/test_mapped_ranges.py):
    # it is IPv4 space, not a subnet of an IPv6 internal network such as ::/0.
    mapped = version == 6 and sub_len >= 96 and sub.network_address.ipv4_mapped is not None
    assume(not mapped)
    return make_network(str(base), cls, "hypothesis"), str(sub)


@FAST
@given(internal_net_and_subnet(), st.booleans())
def test_subnet_of_internal_network_is_internal(case: tuple[Network, str], k3s: bool) -> None:
    net, sub = case
    classifier = Classifier([*(k3s_defaults() if k3s else ()), net])
    got = classifier.classify_range(sub)
    assert got.internal
    assert RANK[got.cls] <= RANK[net.cls]  # the most harmful overlapped class wins
    assert classifier.classify_range(net.cidr).internal


@FAST
@given(
    st.lists(
        st.one_of(V4.map(lambda n: str(ipaddress.IPv4Address(n))), ADDRISH),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([",", ", ", " ,  "]),
)
def test_client_of_matches_crowdsec_source_ip(parts: list[str], sep: str) -> None:
    """CrowdSec's traefik-logs parser: TrimSpace(Split(ClientHost, ",")[-1])."""
    assume(all("," not in p and p == p.strip() for p in parts))
    client_host = sep.join(parts)
    want = client_host.split(",")[-1].strip() if client_host else "10.42.0.1"
    assert client_of(client_host, "10.42.0.1:1") == want


# -- parsers never raise ----------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    ADDRISH,
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TRAEFIK_KEYS = [
    "ClientAddr",
    "ClientHost",
    "DownstreamStatus",
    "Duration",
    "RequestHost",
    "RequestMethod",
    "RouterName",
    "StartUTC",
    "StartLocal",
    "time",
    "entryPointName",
    "request_X-Forwarded-For",
    "request_X-Real-Ip",
    "request_User-Agent",
]
TRAEFIK_OBJ = st.dictionaries(
    st.sampled_from(TRAEFIK_KEYS), JSON_VALUE | ADDRISH, max_size=len(TRAEFIK_KEYS)
)


def _check_parse(lines: list[bytes]) -> None:
    stats = ParseStats()
    recs = TraefikParser(max_line_bytes=4096).parse(lines, stats)
    assert stats.lines == len(lines)
    assert stats.parsed == len(recs)
    assert stats.parsed + stats.skipped_total == len(lines)
    for r in recs:
        assert len(r) == 12


@FAST
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_traefik_parser_never_raises_on_bytes(lines: list[bytes]) -> None:
    _check_parse(lines)


@FAST
@given(st.lists(TRAEFIK_OBJ, min_size=1, max_size=6), st.sampled_from([b"", b"\r", b" ", b"\xff"]))
def test_traefik_parser_never_raises_on_json_objects(
    objs: list[dict[str, Any]], tail: bytes
) -> None:
    _check_parse([json.dumps(o).encode() + tail for o in objs])
    _check_parse([json.dumps(o).encode()[: len(json.dumps(o)) // 2] for o in objs])  # truncated


CLF_FIELD = st.text(
    alphabet=st.characters(blacklist_characters=' "\n\r', codec="ascii"), min_size=1, max_size=12
)


@FAST
@given(
    st.lists(
        st.tuples(CLF_FIELD, CLF_FIELD, CLF_FIELD, st.text(max_size=20), CLF_FIELD),
        min_size=1,
        max_size=6,
    )
)
def test_traefik_parser_never_raises_on_clf_shapes(
    rows: list[tuple[str, str, str, str, str]],
) -> None:
    lines = [
        f'{host} - - [{when}] "GET / HTTP/1.1" {status} 5 "-" "{ua}" 1 "r" "u" {dur}ms'.encode()
        for host, when, status, ua, dur in rows
    ]
    _check_parse(lines)


@FAST
@given(
    st.lists(st.tuples(ADDRISH, st.text(max_size=12), st.text(max_size=30)), min_size=1, max_size=4)
)
@example([("1.2.3.4", "²", "ua")])
def test_traefik_parser_never_raises_on_unicode_clf_fields(
    rows: list[tuple[str, str, str]],
) -> None:
    when = "01/Jan/2024:00:00:00 +0000"
    lines = [
        f'{h} - - [{when}] "GET / HTTP/1.1" {s} 5 "-" "{ua}" 1 "r" "u" 1ms'.encode()
        for h, s, ua in rows
    ]
    _check_parse(lines)


@FAST
@given(
    st.lists(st.binary(max_size=200), max_size=10),
    st.sampled_from(list(Envelope)),
    st.integers(1, 300),
)
def test_envelope_never_raises_and_stays_bounded(
    lines: list[bytes], kind: Envelope, cap: int
) -> None:
    dec = EnvelopeDecoder(kind, max_merged_bytes=cap)
    stats = ParseStats()
    out = dec.unwrap(lines, stats)
    assert all(isinstance(o, bytes) for o in out)
    held = sum(len(p) for parts in dec._partial.values() for p in parts)
    assert held <= cap


@st.composite
def envelope_lines(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(1, 12))):
        stream = draw(st.sampled_from(["stdout", "stderr"]))
        content = draw(st.binary(max_size=40))
        if draw(st.booleans()):
            tag = draw(st.sampled_from(["P", "F", "F:x"]))
            out.append(f"2024-01-01T00:00:00Z {stream} {tag} ".encode() + content)
        else:
            text = content.decode("latin-1") + draw(st.sampled_from(["", "\n"]))
            out.append(json.dumps({"log": text, "stream": stream}).encode())
    return out


@FAST
@given(envelope_lines(), st.integers(1, 100))
def test_envelope_structured_lines_never_raise(lines: list[bytes], cap: int) -> None:
    for kind in (Envelope.AUTO, Envelope.CRI, Envelope.DOCKER):
        dec = EnvelopeDecoder(kind, max_merged_bytes=cap)
        stats = ParseStats()
        out = dec.unwrap(lines, stats)
        assert all(len(o) <= max(cap, 200) for o in out)


@FAST
@given(st.binary(max_size=400))
@example(b"\xef\xbb\xbfnull")
@example(b"[" * 5000)
def test_parse_decisions_only_raises_its_error_on_bytes(data: bytes) -> None:
    try:
        delta = parse_decisions(data)
    except DecisionFormatError:
        return
    assert isinstance(delta, DecisionDelta)


@FAST
@given(JSON_VALUE)
def test_parse_decisions_only_raises_its_error_on_json(value: object) -> None:
    for data in (json.dumps(value).encode(), json.dumps([{"decisions": [value]}]).encode()):
        try:
            delta = parse_decisions(data)
        except DecisionFormatError:
            continue
        assert isinstance(delta, DecisionDelta)


# -- the engine never raises on hostile decisions and records -----------------------------------

DECISION = st.fixed_dictionaries(
    {
        "value": st.one_of(
            ADDRISH, st.sampled_from(["10.42.0.7", "10.42.0.0/24", "0.0.0.0/0", "::ffff:10.42.0.7"])
        ),
        "scope": st.sampled_from(
            ["Ip", "ip", "Range", "range", "Country", "AS", "username", "", "IP"]
        ),
    },
    optional={
        "id": st.integers(0, 5) | st.booleans() | st.none(),
        "duration": st.sampled_from(["4h", "-1s", "0s", "1.5h", "garbage", "", "²h"])
        | st.integers(),
        "type": st.sampled_from(["ban", "captcha", "BAN", "throttle", ""]),
        "simulated": st.booleans(),
    },
)


@FAST
@given(
    st.lists(DECISION, max_size=6),
    st.lists(DECISION, max_size=3),
    st.lists(
        st.one_of(ADDRISH, st.sampled_from(["10.42.0.7", "::ffff:10.42.0.7", "1.1.1.1"])),
        max_size=30,
    ),
    st.booleans(),
)
def test_engine_never_raises(
    new: list[dict[str, object]], gone: list[dict[str, object]], clients: list[str], startup: bool
) -> None:
    now = [1_700_000_000.0]
    engine = Engine(EngineConfig(masked_min_requests=1), Classifier(k3s_defaults()), lambda: now[0])
    records = [
        (1_700_000_000.0 + i, "websecure", c, "h", "r", "", "", "", c, c, 200, 0)
        for i, c in enumerate(clients)
    ]
    engine.ingest(records, ParseStats(), "s")
    engine.apply(
        DecisionDelta(
            tuple(map(decision_from_obj, new)), tuple(map(decision_from_obj, gone)), startup
        )
    )
    now[0] += 86400
    engine.tick()
    engine.finish()
    for f in engine.findings.values():
        assert f.severity in Severity
        blast = f.evidence.get("blast_radius")
        if blast is not None:
            assert 0.0 <= blast["request_share"] <= 1.0
            assert blast["requests"] <= blast["total_requests"]
