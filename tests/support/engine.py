"""An engine driven by hand: injected clock, synthetic records and decision deltas."""

from __future__ import annotations

from parsers import records as R
from parsers.crowdsec import Decision, DecisionDelta
from parsers.records import AccessRecord, ParseStats
from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.bouncer import MismatchTally
from pipeline.core.engine import Engine, EngineConfig
from pipeline.core.findings import Finding, Kind, State
from pipeline.core.traffic import Timeline

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a bucket boundary


class FakeClock:
    """The engine's only notion of wall-clock time; tests move it by hand."""

    def __init__(self, now: float = T0 + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rec(
    client: str,
    ts: float = T0,
    *,
    ep: str = "websecure",
    host: str = "app.example.com",
    router: str = "app@kubernetes",
    ch: str | None = None,
    xff: str = "",
    rip: str = "",
    ua: str = "",
) -> AccessRecord:
    out: list[object] = [None] * 12
    out[R.TS], out[R.ENTRYPOINT], out[R.CLIENT], out[R.HOST], out[R.ROUTER] = (
        ts,
        ep,
        client,
        host,
        router,
    )
    out[R.CLIENT_HOST_RAW] = client if ch is None else ch
    out[R.PEER] = f"[{client}]:40000" if ":" in client else f"{client}:40000"
    out[R.STATUS], out[R.XFF], out[R.REAL_IP] = 200, xff, rip
    out[R.USER_AGENT], out[R.DURATION_NS] = ua, 1_000_000
    return tuple(out)  # type: ignore[return-value]


def ban(
    value: str,
    id_: int | None = 1,
    *,
    scope: str = "Ip",
    type_: str = "ban",
    duration_s: float | None = 4 * 3600.0,
    simulated: bool = False,
) -> Decision:
    return Decision(
        id=id_,
        origin="crowdsec",
        scenario="crowdsecurity/http-probing",
        scope=scope,
        value=value,
        type=type_,
        duration_s=duration_s,
        simulated=simulated,
    )


def new(*ds: Decision, startup: bool = False) -> DecisionDelta:
    return DecisionDelta(tuple(ds), (), startup)


def deleted(*ds: Decision) -> DecisionDelta:
    return DecisionDelta((), tuple(ds))


def make_engine(
    clock: FakeClock | None = None,
    classifier: Classifier | None = None,
    timeline: Timeline | None = None,
    mismatch: MismatchTally | None = None,
    **cfg: object,
) -> tuple[Engine, FakeClock]:
    clock = clock or FakeClock()
    config = EngineConfig(**cfg)  # type: ignore[arg-type]
    engine = Engine(config, classifier or Classifier(k3s_defaults()), clock, timeline, mismatch)
    return engine, clock


def feed(engine: Engine, records: list[AccessRecord], source: str = "traefik") -> None:
    stats = ParseStats()
    stats.lines = stats.json = len(records)
    engine.ingest(records, stats, source)


def only(engine: Engine, kind: Kind) -> Finding:
    found = [f for f in engine.findings.values() if f.kind is kind]
    assert len(found) == 1, engine.findings
    return found[0]


def events(engine: Engine) -> list[tuple[State, Kind, str]]:
    return [(e.state, e.finding.kind, e.finding.target) for e in engine.drain_events()]


# -- internal bans ------------------------------------------------------------------------------
