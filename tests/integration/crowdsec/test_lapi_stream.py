"""LapiStream against a real CrowdSec 1.4.6 LAPI on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from parsers.crowdsec import DecisionDelta
from pipeline.crowdsec.client import fetch_decisions
from pipeline.crowdsec.lapi import LapiAuthError, LapiConfig, LapiError, LapiStream
from pipeline.errors import ConfigError, UsageError
from pipeline.secrets import Secret, load_secret, secret_from_env, secret_from_file
from tests.support.crowdsec import CrowdSecInstance, free_port
from tests.support.crowdsec_fixtures import CrowdSecFactory
from tests.support.waiting import until as _wait

INTERNAL_HOP = "10.42.0.7"
INTERNAL_RANGE = "10.42.0.0/24"
EXTERNAL = "203.0.113.9"
WAIT = 20.0  # generous upper bound for anything to show up; never asserted as a duration


def fast_config(url: str, key: Secret, key_source: str = "test") -> LapiConfig:
    return LapiConfig(
        url=url,
        key=key,
        key_source=key_source,
        poll_interval=0.2,
        timeout=2.0,
        backoff_initial=0.05,
        backoff_max=0.4,
    )


class Collector:
    """Runs ``stream.deltas`` in a task; tests await the deltas they expect."""

    def __init__(self, stream: LapiStream) -> None:
        self.stream = stream
        self.stop = asyncio.Event()
        self.queue: asyncio.Queue[DecisionDelta] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for delta in self.stream.deltas(self.stop):
            await self.queue.put(delta)

    async def next(self, pred: Callable[[DecisionDelta], bool]) -> DecisionDelta:
        async def wait() -> DecisionDelta:
            while True:
                delta = await self.queue.get()
                if pred(delta):
                    return delta

        return await asyncio.wait_for(wait(), WAIT)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT)
        await self.stream.aclose()


@contextlib.asynccontextmanager
async def collecting(config: LapiConfig) -> AsyncIterator[Collector]:
    c = Collector(LapiStream(config))
    try:
        yield c
    finally:
        await c.close()


async def first_delta(stream: LapiStream) -> DecisionDelta:
    async for delta in stream.deltas(asyncio.Event()):
        return delta
    pytest.fail("the stream ended without a delta")


async def until(cond: Callable[[], bool], what: str) -> None:
    await _wait(cond, what, timeout=WAIT)


def active(delta: DecisionDelta) -> set[str]:
    return {d.value for d in delta.new if not d.expired}


async def test_startup_delete_outage_and_resync(
    crowdsec_factory: CrowdSecFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inst = crowdsec_factory()
    inst.start_lapi()
    key = inst.add_bouncer("auditor-stream")
    inst.add_decision(ip=INTERNAL_HOP, reason="probing")
    inst.add_decision(range=INTERNAL_RANGE, reason="probing")
    inst.add_decision(ip=EXTERNAL, reason="probing")
    short_until = time.monotonic() + 3
    inst.add_decision(ip="10.42.0.99", duration="3s", reason="short")

    async with collecting(fast_config(inst.lapi_url, Secret(key))) as c:
        first = await c.next(lambda d: True)
        assert first.startup
        assert {INTERNAL_HOP, INTERNAL_RANGE, EXTERNAL} <= active(first)
        scopes = {d.value: d.scope for d in first.new}
        assert scopes[INTERNAL_HOP] == "Ip"
        assert scopes[INTERNAL_RANGE] == "Range"
        assert c.stream.status.up
        assert c.stream.status.polls_ok >= 1

        await asyncio.to_thread(inst.delete_decision, ip=EXTERNAL)
        gone = await c.next(lambda d: EXTERNAL in {x.value for x in d.deleted})
        assert not gone.startup

        # Outage: the stream reports down while the LAPI is stopped...
        failed_before = c.stream.status.polls_failed
        await asyncio.to_thread(inst.stop)
        await until(lambda: not c.stream.status.up, "status.up to turn False")
        await until(lambda: c.stream.status.polls_failed > failed_before, "failed polls")
        assert c.stream.status.last_error
        assert c.stream.status.last_success is not None
        # ...long enough for the short decision to expire while nobody can see it.
        await asyncio.sleep(max(0.0, short_until - time.monotonic()) + 0.5)
        await asyncio.to_thread(inst.start_lapi)

        # Back up: a full resync (startup=True) with exactly the current state.
        resync = await c.next(lambda d: d.startup)
        assert active(resync) == {INTERNAL_HOP, INTERNAL_RANGE}
        assert c.stream.status.up

        # And increments continue after the resync.
        await asyncio.to_thread(inst.add_decision, ip="198.51.100.4", reason="after restart")
        later = await c.next(lambda d: "198.51.100.4" in active(d))
        assert not later.startup
    assert "is down" in caplog.text
    assert key not in caplog.text


async def test_wrong_key_is_fatal_and_names_the_source(
    crowdsec_lapi: CrowdSecInstance, tmp_path: Path
) -> None:
    wrong = "not-a-real-bouncer-key-7f3a9c"
    key_file = tmp_path / "lapi-key"
    key_file.write_text(wrong + "\n")
    secret, source = load_secret(file=key_file, what="LAPI key")
    stream = LapiStream(fast_config(crowdsec_lapi.lapi_url, secret, source))
    try:
        with pytest.raises(LapiAuthError) as info:
            await first_delta(stream)
    finally:
        await stream.aclose()
    message = str(info.value)
    assert str(key_file) in message
    assert "403" in message
    assert wrong not in message
    assert not stream.status.up
    assert stream.status.polls_failed == 1
    assert wrong not in stream.status.last_error


async def test_key_from_file_and_from_env(
    crowdsec_lapi: CrowdSecInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = crowdsec_lapi.add_bouncer("auditor-keysources")
    crowdsec_lapi.add_decision(ip=INTERNAL_HOP, reason="key sources")
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    monkeypatch.setenv("AUDITOR_TEST_LAPI_KEY", key)

    for secret, source in (
        load_secret(file=key_file, what="LAPI key"),
        load_secret(env="AUDITOR_TEST_LAPI_KEY", what="LAPI key"),
    ):
        async with collecting(fast_config(crowdsec_lapi.lapi_url, secret, source)) as c:
            first = await c.next(lambda d: True)
        assert first.startup, source
        assert active(first) == {INTERNAL_HOP}, source


async def test_unreachable_lapi_retries_and_stops_promptly() -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    async with collecting(fast_config(url, Secret("k"))) as c:
        await until(lambda: c.stream.status.polls_failed >= 3, "three failed polls")
        assert not c.stream.status.up
        assert c.stream.status.last_success is None
        assert url.rstrip("/") in c.stream.status.last_error
        assert c.queue.empty()
    assert c.task.done()
    assert c.task.exception() is None


async def test_wrong_path_is_a_fatal_error(crowdsec_lapi: CrowdSecInstance) -> None:
    key = crowdsec_lapi.add_bouncer("auditor-wrongpath")
    stream = LapiStream(fast_config(crowdsec_lapi.lapi_url + "nope/", Secret(key)))
    try:
        with pytest.raises(LapiError, match="HTTP 404") as info:
            await first_delta(stream)
    finally:
        await stream.aclose()
    assert not isinstance(info.value, LapiAuthError)


async def test_one_shot_decisions_for_auditor_check(crowdsec_lapi: CrowdSecInstance) -> None:
    url = crowdsec_lapi.lapi_url
    key = crowdsec_lapi.add_bouncer("auditor-oneshot")
    crowdsec_lapi.add_decision(ip=INTERNAL_HOP, reason="one shot")
    crowdsec_lapi.add_decision(range=INTERNAL_RANGE, reason="one shot")
    found = await fetch_decisions(url, key)
    assert {(d.scope, d.value) for d in found} == {("Ip", INTERNAL_HOP), ("Range", INTERNAL_RANGE)}
    wrong = "not-a-real-bouncer-key-1b2c"
    with pytest.raises(UsageError) as info:
        await fetch_decisions(url, wrong)
    assert str(info.value) == f"--lapi-key-file: the LAPI at {url} rejected the key (403)"


def test_key_never_shown(tmp_path: Path) -> None:
    raw = "s3cr3t-bouncer-key"
    cfg = LapiConfig(url="http://127.0.0.1:1/", key=Secret(raw), key_source="env X")
    for text in (repr(cfg), str(cfg), repr(cfg.key), str(cfg.key), f"{cfg.key}", f"{cfg.key!r}"):
        assert raw not in text
    assert cfg.key.reveal() == raw
    assert Secret(raw) == cfg.key
    assert Secret("other") != cfg.key
    with pytest.raises(TypeError):
        pickle.dumps(cfg.key)
    with pytest.raises(AttributeError):
        cfg.key._value = "x"


def test_secret_source_errors_name_the_source(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError, match=f"file {missing} does not exist"):
        secret_from_file(missing, what="LAPI key")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        secret_from_file(empty)
    with pytest.raises(ConfigError, match="environment variable NOPE_KEY is not set"):
        secret_from_env("NOPE_KEY", environ={})
    with pytest.raises(ConfigError, match="exactly one"):
        load_secret(file=empty, env="X")
    secret, source = secret_from_env("K", environ={"K": " abc \n"})
    assert secret.reveal() == "abc"
    assert source == "environment variable K"
