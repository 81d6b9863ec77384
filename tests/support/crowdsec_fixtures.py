"""Pytest plugin: real CrowdSec 1.4.6 instances on loopback (see tests/support/crowdsec.py).

Fixtures:
- ``crowdsec_lapi``: a LAPI-only instance shared by the module; every decision is deleted after
  each test, and it is restarted if a test stopped it. Use unique bouncer names per test.
- ``crowdsec_factory``: ``factory(whitelists=False) -> CrowdSecInstance``, a fresh, not yet
  started instance per call (for tests that restart the LAPI or run the agent); all are stopped
  at teardown.

A missing crowdsec package FAILS the test (with the install command), it never skips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.crowdsec import CrowdSecError, CrowdSecInstance, CrowdSecUnavailable

CrowdSecFactory = Callable[..., CrowdSecInstance]


def make_instance(root: Path, **kwargs: object) -> CrowdSecInstance:
    """A CrowdSecInstance, or a test failure that says how to install CrowdSec."""
    try:
        return CrowdSecInstance(root, **kwargs)  # type: ignore[arg-type]
    except CrowdSecUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    except CrowdSecError as exc:
        pytest.fail(f"could not set up CrowdSec under {root}: {exc}", pytrace=False)


def start_or_fail(start: Callable[[], None]) -> None:
    try:
        start()
    except CrowdSecError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def crowdsec_lapi_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrowdSecInstance]:
    inst = make_instance(tmp_path_factory.mktemp("crowdsec-lapi"))
    try:
        start_or_fail(inst.start_lapi)
        yield inst
    finally:
        inst.stop()


@pytest.fixture
def crowdsec_lapi(crowdsec_lapi_shared: CrowdSecInstance) -> Iterator[CrowdSecInstance]:
    inst = crowdsec_lapi_shared
    if not inst.running:
        start_or_fail(inst.start_lapi)
    yield inst
    if not inst.running:
        start_or_fail(inst.start_lapi)
    inst.delete_all_decisions()


@pytest.fixture
def crowdsec_factory(tmp_path: Path) -> Iterator[CrowdSecFactory]:
    made: list[CrowdSecInstance] = []

    def factory(**kwargs: object) -> CrowdSecInstance:
        inst = make_instance(tmp_path / f"crowdsec-{len(made)}", **kwargs)
        made.append(inst)
        return inst

    try:
        yield factory
    finally:
        for inst in made:
            inst.stop()
