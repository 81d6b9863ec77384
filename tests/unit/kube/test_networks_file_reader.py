"""A sidecar follows the networks file in a ConfigMap volume laid out and updated exactly as the
kubelet does it (``..<timestamp>/`` directories, the ``..data`` link swap, ``<key>`` links), keeps
its last good copy through bad and missing files, and says how old its copy is."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.core.addresses import AddrClass, make_network
from pipeline.core.networks_file import encode
from pipeline.sources.networks_file import NetworksFileReader
from tests.support.kube_api import ConfigMapVolume

KEY = "networks.json"
NOW = 1_796_400_000.0


def _file(node_ip: str, synced_at: float | None = NOW - 30) -> bytes:
    return encode(
        synced_at=synced_at,
        source="in-cluster service account",
        networks=[make_network(node_ip, AddrClass.NODE, "node n1 status.addresses ExternalIP")],
        findings=[],
    )


@pytest.fixture(name="volume")
def _volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "networks")


def _nodes(reader: NetworksFileReader) -> list[str]:
    assert reader.current is not None
    return [n.cidr for n in reader.current.doc.networks]


def test_the_layout_is_the_kubelets(volume: ConfigMapVolume) -> None:
    volume.publish({KEY: _file("203.0.113.10")})
    first = (volume.root / "..data").readlink()
    volume.publish({KEY: _file("203.0.113.11")})
    stamped = [p.name for p in volume.root.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(stamped) == 1 and stamped[0].startswith("..2")  # the old one is gone
    assert (volume.root / "..data").readlink() == Path(stamped[0]) != first
    assert volume.path(KEY).readlink() == Path("..data") / KEY  # made once, never rewritten


def test_follows_every_swap_and_reads_each_copy_once(volume: ConfigMapVolume) -> None:
    volume.publish({KEY: _file("203.0.113.10")})
    reader = NetworksFileReader(str(volume.path(KEY)))
    assert reader.poll(NOW) is not None
    assert _nodes(reader) == ["203.0.113.10/32"]
    for _ in range(3):
        assert reader.poll(NOW + 1) is None  # the same file: not read again
    assert reader.loads == 1
    volume.publish({KEY: _file("203.0.113.11")})
    doc = reader.poll(NOW + 2)
    assert doc is not None
    assert _nodes(reader) == ["203.0.113.11/32"]
    assert reader.loads == 2
    assert reader.problem == ""


def test_a_bad_file_keeps_the_last_good_copy_and_is_reported_once(
    volume: ConfigMapVolume, caplog: pytest.LogCaptureFixture
) -> None:
    volume.publish({KEY: _file("203.0.113.10")})
    reader = NetworksFileReader(str(volume.path(KEY)))
    reader.poll(NOW)
    bad = _file("203.0.113.11").replace(b'"networks": [', b'"networks": 5, "x": [')
    volume.publish({KEY: bad})
    with caplog.at_level(logging.WARNING, logger="auditor.networks"):
        for i in range(5):
            assert reader.poll(NOW + i) is None
    assert _nodes(reader) == ["203.0.113.10/32"]
    assert "'networks' is missing or not a list" in reader.problem
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "keeping the last good copy" in warnings[0].getMessage()
    volume.publish({KEY: _file("203.0.113.12")})
    assert reader.poll(NOW + 9) is not None
    assert _nodes(reader) == ["203.0.113.12/32"]
    assert reader.problem == ""


def test_a_missing_key_keeps_the_last_good_copy(volume: ConfigMapVolume) -> None:
    """The ConfigMap lost its key (someone re-applied it empty): the link disappears."""
    volume.publish({KEY: _file("203.0.113.10")})
    reader = NetworksFileReader(str(volume.path(KEY)))
    reader.poll(NOW)
    volume.publish({"other": b"x"})
    assert not volume.path(KEY).exists()
    assert reader.poll(NOW + 1) is None
    assert "missing" in reader.problem
    assert _nodes(reader) == ["203.0.113.10/32"]
    volume.publish({KEY: _file("203.0.113.13")})
    assert reader.poll(NOW + 2) is not None
    assert _nodes(reader) == ["203.0.113.13/32"]


def test_an_empty_or_absent_volume_is_no_copy_yet(tmp_path: Path) -> None:
    """An optional ConfigMap that does not exist yet: the kubelet mounts an empty directory."""
    reader = NetworksFileReader(str(tmp_path / KEY))
    assert reader.poll(NOW) is None
    assert reader.current is None
    assert reader.age(NOW) == float("inf")
    (tmp_path / KEY).mkdir()  # not a file at all
    assert reader.poll(NOW) is None
    assert reader.problem


def test_age_counts_from_the_watchers_last_sync(volume: ConfigMapVolume) -> None:
    volume.publish({KEY: _file("203.0.113.10", synced_at=NOW - 30)})
    reader = NetworksFileReader(str(volume.path(KEY)))
    reader.poll(NOW)
    assert reader.age(NOW) == 30
    assert reader.age(NOW + 600) == 630  # no new copy: it keeps ageing
    volume.publish({KEY: _file("203.0.113.10", synced_at=None)})
    reader.poll(NOW + 601)
    assert reader.age(NOW + 601) == float("inf")  # published while never in sync


def test_a_time_stamp_from_the_future_ages_from_when_it_was_read(
    volume: ConfigMapVolume,
) -> None:
    """A watcher with a fast clock must not make its last copy look fresh for ever."""
    volume.publish({KEY: _file("203.0.113.10", synced_at=NOW + 86400)})
    reader = NetworksFileReader(str(volume.path(KEY)))
    reader.poll(NOW)
    assert reader.age(NOW) == 0
    assert reader.age(NOW + 900) == 900
