"""The version table and its parser: boundaries of every fact, floating tags, hostile strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.kube import versions
from pipeline.kube.checks import CHECKS
from pipeline.kube.versions import (
    FACTS,
    generic_clf_active,
    image_name,
    image_tag,
    k3s_bundles_traefik_v3,
    k3s_version,
    parse_version,
    servicelb_fixed_in,
    servicelb_ignores_etp_local,
    traefik_image_version,
    traefik_v3,
)


def _v(text: str) -> versions.Version:
    v = parse_version(text)
    assert v is not None, text
    return v


# -- parsing --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "parts", "build"),
    [
        ("v1.26.1+k3s1", (1, 26, 1), "k3s1"),
        ("1.26.2-rc1+k3s1", (1, 26, 2), "k3s1"),
        ("v1.28.3+k3s2", (1, 28, 3), "k3s2"),
        ("v1.29.5+rke2r1", (1, 29, 5), "rke2r1"),
        ("3.5.2", (3, 5, 2), ""),
        ("v3.5", (3, 5, None), ""),
        ("v3", (3, None, None), ""),
        ("3.5.2-nanoserver-ltsc2022", (3, 5, 2), ""),
        (" v1.26.1+k3s1\n", (1, 26, 1), "k3s1"),
    ],
)
def test_parse_version(text: str, parts: tuple[int, int | None, int | None], build: str) -> None:
    v = _v(text)
    assert (v.major, v.minor, v.patch) == parts
    assert v.build == build


@pytest.mark.parametrize(
    "text",
    [
        None,
        126,
        b"v1.26.1+k3s1",
        "",
        "latest",
        "stable",
        "sha256:0123abcd",
        "v1.26.1+k3s1 extra",
        "v１.２６.１+k3s1",  # full-width digits: int() would take them, a version has none
        "v1.26.1\x00+k3s1",
        "1234567.0.0",  # a component longer than 6 digits
        "v" + "1." * 80 + "1",
        "v1.26.1+" + "k" * 200,
        "..",
        "v-1.2.3",
    ],
)
def test_hostile_strings_are_not_versions(text: object) -> None:
    assert parse_version(text) is None
    assert k3s_version(text) is None


@given(st.text(max_size=300))
def test_parser_never_raises(text: str) -> None:
    v = parse_version(text)
    if v is not None:
        assert v.major >= 0 and len(v.raw) <= 128
        for floor in ((1, 26, 2), (3, 0, 0), (0, 0, 0)):
            assert v.at_least(floor) in (True, False, None)
        assert servicelb_ignores_etp_local(v) in (True, False, None)
    assert k3s_version(text) is None or k3s_version(text) == v
    assert isinstance(image_tag(text), str) and isinstance(image_name(text), str)
    assert traefik_image_version((text,)) is None or isinstance(
        traefik_image_version((text,)), versions.Version
    )


def test_k3s_version_needs_a_k3s_build_and_a_patch() -> None:
    assert k3s_version("v1.29.5+k3s1") == parse_version("v1.29.5+k3s1")
    assert k3s_version("v1.29.5") is None  # upstream kubelet
    assert k3s_version("v1.29.5+rke2r1") is None
    assert k3s_version("v1.29+k3s1") is None


def test_at_least_and_floating_tags() -> None:
    assert _v("3.5.2").at_least((3, 5, 2)) is True
    assert _v("3.5.1").at_least((3, 5, 2)) is False
    assert _v("3.6.0").at_least((3, 5, 2)) is True
    assert _v("2.11.30").at_least((3, 0, 0)) is False
    assert _v("v3").at_least((3, 0, 0)) is True  # every 3.x is >= 3.0.0
    assert _v("v3").at_least((3, 5, 2)) is None  # v3 floats over 3.5.2
    assert _v("v3.5").at_least((3, 5, 2)) is None
    assert _v("v3.6").at_least((3, 5, 2)) is True
    assert _v("v4").at_least((3, 5, 2)) is True
    assert _v("v2").at_least((3, 0, 0)) is False


# -- images ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "name", "tag"),
    [
        ("traefik:v3.5.2", "traefik", "v3.5.2"),
        ("docker.io/library/traefik:3.5.2@sha256:abcd", "traefik", "3.5.2"),
        (
            "registry:5000/rancher/mirrored-library-traefik:3.3.2",
            "mirrored-library-traefik",
            "3.3.2",
        ),
        ("registry:5000/rancher/mirrored-library-traefik", "mirrored-library-traefik", ""),
        ("traefik", "traefik", ""),
        ("traefik@sha256:abcd", "traefik", ""),
        ("", "", ""),
        (":3.5.2", "", ""),
    ],
)
def test_image_name_and_tag(image: str, name: str, tag: str) -> None:
    assert image_name(image) == name
    assert image_tag(image) == tag


def test_traefik_version_comes_from_the_traefik_container() -> None:
    sidecar = "ghcr.io/example/log-shipper:9.9.9"
    v = traefik_image_version((sidecar, "rancher/mirrored-library-traefik:3.5.3"))
    assert v is not None and (v.major, v.minor, v.patch) == (3, 5, 3)
    assert traefik_image_version((sidecar,)) is None
    assert traefik_image_version(("traefik:latest",)) is None
    assert traefik_image_version(("traefik@sha256:abcd",)) is None
    assert traefik_image_version(()) is None


# -- the facts ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kubelet", "ignored", "fixed_in"),
    [
        ("v1.21.14+k3s1", True, "v1.26.2+k3s1 or later"),  # lines before 1.23: never fixed
        ("v1.22.17+k3s1", True, "v1.26.2+k3s1 or later"),
        ("v1.23.16+k3s1", True, "v1.23.17+k3s1"),
        ("v1.23.17+k3s1", False, "v1.23.17+k3s1"),
        ("v1.24.10+k3s1", True, "v1.24.11+k3s1"),
        ("v1.24.11+k3s1", False, "v1.24.11+k3s1"),
        ("v1.25.0+k3s1", True, "v1.25.7+k3s1"),
        ("v1.25.6+k3s1", True, "v1.25.7+k3s1"),
        ("v1.25.7+k3s1", False, "v1.25.7+k3s1"),
        ("v1.26.1+k3s1", True, "v1.26.2+k3s1"),
        ("v1.26.1+k3s2", True, "v1.26.2+k3s1"),
        ("v1.26.2-rc1+k3s1", False, "v1.26.2+k3s1"),  # an rc counts as its release
        ("v1.26.2+k3s1", False, "v1.26.2+k3s1"),
        ("v1.27.0+k3s1", False, "v1.26.2+k3s1 or later"),
        ("v1.33.5+k3s1", False, "v1.26.2+k3s1 or later"),
    ],
)
def test_servicelb_etp_local_boundaries(kubelet: str, ignored: bool, fixed_in: str) -> None:
    v = k3s_version(kubelet)
    assert v is not None
    assert servicelb_ignores_etp_local(v) is ignored
    assert servicelb_fixed_in(v) == fixed_in


def test_servicelb_cannot_tell_without_a_patch() -> None:
    assert servicelb_ignores_etp_local(_v("v1.25+k3s1")) is None
    assert servicelb_ignores_etp_local(_v("v2.1.0+k3s1")) is False  # after every fixed line
    assert servicelb_ignores_etp_local(_v("v0.9.0+k3s1")) is True  # before every fixed line


@pytest.mark.parametrize(
    ("tag", "active"),
    [("2.11.18", False), ("3.5.1", False), ("v3.5.2", True), ("3.6.7", True), ("v3.5", None)],
)
def test_generic_clf_from_3_5_2(tag: str, active: bool | None) -> None:
    assert generic_clf_active(_v(tag)) is active


def test_k3s_packages_traefik_v3_from_1_32_2() -> None:
    assert k3s_bundles_traefik_v3(_v("v1.32.1+k3s1")) is False  # shipped Traefik v2.11.18
    assert k3s_bundles_traefik_v3(_v("v1.32.2+k3s1")) is True  # shipped Traefik v3.3.2
    assert k3s_bundles_traefik_v3(_v("v1.31.13+k3s1")) is False
    assert traefik_v3(_v("3.3.2")) is True and traefik_v3(_v("2.11.18")) is False


def test_every_fact_is_complete_sourced_and_checked() -> None:
    assert len({f.check for f in FACTS}) == len(FACTS)
    for f in FACTS:
        assert f.check in CHECKS
        assert f.component and f.affected and f.breaks and f.fix
        assert f.sources and all(u.startswith("https://") for u in f.sources)
    assert set(versions.FACT) == {f.check for f in FACTS}
    # The table's range text and the predicate agree on each line's first fixed release.
    servicelb = versions.FACT["servicelb_etp_ignored"]
    for fixed in versions.SERVICELB_ETP_FIXED.values():
        assert "v{}.{}.{}+k3s1".format(*fixed) in servicelb.affected
