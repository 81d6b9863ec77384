"""Version facts about k3s and Traefik that change what a fix does, with their sources.

The config checks (``checks.py``) read versions from the cluster (a node's
``status.nodeInfo.kubeletVersion``, the Traefik container's image tag) and ask this table what
applies. Every fact names the affected versions, what breaks, the fix and the upstream
change or release note it comes from, so a finding can cite it and a reader can verify it.

Versions come from the API and from image names the user chose, so parsing never raises: a
string that is not a plain version (``latest``, a digest, non-ASCII digits, a 300-character
tag) parses to ``None`` and every predicate answers ``None`` ("cannot tell") for it. The checks
turn "cannot tell" into no finding, or into one ``version_unknown`` info finding when the
configuration they look at would be wrong on some versions (see ``checks.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Longer strings are not versions; bounding them keeps the regex linear on hostile input.
_MAX_LEN = 128
# v1.26.2+k3s1, 1.26.2-rc1+k3s1, v3.5, 3, v3.5.2-nanoserver-ltsc2022. Numbers are ASCII and
# at most 6 digits: "v１.26" (full-width digits) and 10**100 are not versions.
_VERSION = re.compile(
    r"v?(?P<major>[0-9]{1,6})(?:\.(?P<minor>[0-9]{1,6})(?:\.(?P<patch>[0-9]{1,6}))?)?"
    r"(?:-(?P<pre>[0-9A-Za-z.-]{1,64}))?(?:\+(?P<build>[0-9A-Za-z.-]{1,64}))?",
    re.ASCII,
)

Triple = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Version:
    """A parsed version. ``minor``/``patch`` are ``None`` for a floating tag such as ``v3.5``.

    A pre-release or variant suffix (``-rc1``, ``-nanoserver``) is kept as text but not
    ordered: a release candidate counts as the release it precedes."""

    major: int
    minor: int | None
    patch: int | None
    pre: str
    build: str
    raw: str

    @property
    def k3s(self) -> bool:
        """Built by k3s: the build metadata is ``k3s1``, ``k3s2``..."""
        return self.build.startswith("k3s")

    @property
    def line(self) -> tuple[int, int] | None:
        return None if self.minor is None else (self.major, self.minor)

    def at_least(self, floor: Triple) -> bool | None:
        """``self >= floor``, or ``None`` when a floating tag spans both sides of ``floor``."""
        parts = (self.major, self.minor, self.patch)
        for have, want in zip(parts, floor, strict=True):
            if have is None:
                # v3 >= 3.0.0 holds for every 3.x; v3.5 vs 3.5.2 cannot be told.
                rest = floor[parts.index(None) :]
                return True if not any(rest) else None
            if have != want:
                return have > want
        return True

    def __str__(self) -> str:
        return self.raw


def parse_version(text: object) -> Version | None:
    """A ``Version`` from an untrusted string, or ``None``. Never raises."""
    if not isinstance(text, str) or not text or len(text) > _MAX_LEN:
        return None
    raw = text.strip()
    m = _VERSION.fullmatch(raw)
    if m is None:
        return None
    minor, patch = m.group("minor"), m.group("patch")
    return Version(
        major=int(m.group("major")),
        minor=None if minor is None else int(minor),
        patch=None if patch is None else int(patch),
        pre=m.group("pre") or "",
        build=m.group("build") or "",
        raw=raw,
    )


def k3s_version(kubelet_version: object) -> Version | None:
    """The k3s release a node runs, from its kubelet version (``v1.29.5+k3s1``); ``None`` for
    anything else (upstream kubelet, rke2, unreadable)."""
    v = parse_version(kubelet_version)
    return v if v is not None and v.k3s and v.patch is not None else None


def image_tag(image: object) -> str:
    """The tag of an image reference (``reg:5000/ns/traefik:v3.5.2@sha256:...`` -> ``v3.5.2``);
    "" when it has none (a bare name or a digest only)."""
    if not isinstance(image, str) or len(image) > 512:
        return ""
    ref = image.split("@", 1)[0]
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # "registry:5000/traefik" has a port, not a tag
        return ""
    return tag if name else ""


def image_name(image: object) -> str:
    """The last path element of an image, without tag or digest (``mirrored-library-traefik``)."""
    if not isinstance(image, str) or len(image) > 512:
        return ""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]  # a registry port is never in the last part
    return last.split(":", 1)[0].lower()


def traefik_image_version(images: tuple[str, ...]) -> Version | None:
    """The Traefik version of a pod, from the tag of its Traefik container's image (the one
    whose name contains ``traefik``: ``traefik``, ``rancher/mirrored-library-traefik``)."""
    for image in images:
        if "traefik" in image_name(image):
            return parse_version(image_tag(image))
    return None


# -- the facts ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionFact:
    check: str  # the finding code that applies this fact
    component: str
    affected: str  # the versions, as a reader would write them
    breaks: str
    fix: str
    sources: tuple[str, ...]


# k3s servicelb honours externalTrafficPolicy: Local from these patches on each line
# (k3s-io/k3s#6726 on master, backported by #6907, #6908, #6909).
SERVICELB_ETP_FIXED: dict[tuple[int, int], Triple] = {
    (1, 23): (1, 23, 17),
    (1, 24): (1, 24, 11),
    (1, 25): (1, 25, 7),
    (1, 26): (1, 26, 2),
}
_SERVICELB_FIRST_LINE = (1, 23)  # older lines were never fixed
_SERVICELB_FIXED_AFTER = (1, 26)  # every later line has the fix from its first release
GENERIC_CLF_SINCE: Triple = (3, 5, 2)
K3S_TRAEFIK_V3_SINCE: Triple = (1, 32, 2)

FACTS: tuple[VersionFact, ...] = (
    VersionFact(
        check="servicelb_etp_ignored",
        component="k3s servicelb (klipper-lb)",
        affected="k3s < v1.23.17+k3s1, v1.24.0-v1.24.10, v1.25.0-v1.25.6, v1.26.0-v1.26.1 "
        "(fixed in v1.23.17+k3s1, v1.24.11+k3s1, v1.25.7+k3s1, v1.26.2+k3s1 and every later "
        "release)",
        breaks="ServiceLB ignores a Service's externalTrafficPolicy: Local: it advertises every "
        "node that runs a svclb pod and forwards to all cluster endpoints, so the svclb pod "
        "masquerades the client address and setting Local (the usual fix) changes nothing",
        fix="upgrade the k3s servers to a fixed patch of their line (or any later minor), or "
        "replace servicelb with MetalLB",
        sources=(
            "https://github.com/k3s-io/k3s/pull/6726",
            "https://github.com/k3s-io/k3s/pull/6907",
            "https://github.com/k3s-io/k3s/pull/6908",
            "https://github.com/k3s-io/k3s/pull/6909",
            "https://docs.k3s.io/release-notes/v1.26.X#release-v1262k3s1",
            "https://docs.k3s.io/release-notes/v1.25.X#release-v1257k3s1",
        ),
    ),
    VersionFact(
        check="accesslog_generic_clf",
        component="Traefik access log format genericCLF",
        affected="Traefik >= v3.5.2 (earlier versions do not know genericCLF and fall back to "
        "the common format)",
        breaks="genericCLF writes plain CLF without Traefik's trailing request count, router "
        'name, server URL and duration ("<n> \\"router\\" \\"url\\" <ms>ms"); the CLF pattern '
        "of CrowdSec's crowdsecurity/traefik-logs parser requires them, so every line stays "
        "unparsed and no scenario sees the traffic",
        fix="log in JSON (--accesslog.format=json), or in Traefik's own common format",
        sources=(
            "https://github.com/traefik/traefik/pull/12033",
            "https://github.com/traefik/traefik/issues/12031",
            "https://github.com/traefik/traefik-helm-chart/pull/1513",
            "https://github.com/crowdsecurity/hub/blob/master/parsers/s01-parse/crowdsecurity/"
            "traefik-logs.yaml",
        ),
    ),
    VersionFact(
        check="traefik_v3_api_group",
        component="k3s packaged Traefik",
        affected="k3s >= v1.32.2+k3s1 (packaged Traefik v3.3.2 and later; v1.32.1+k3s1 and "
        "the 1.31 line ship Traefik v2.11) running Traefik >= v3",
        breaks="Traefik v3 no longer reads the traefik.containo.us API group: Middleware, "
        "IngressRoute and other Traefik objects written for Traefik v2 with apiVersion "
        "traefik.containo.us/v1alpha1 (for example a CrowdSec bouncer Middleware) are "
        "ignored after the upgrade, and routes that reference them fail",
        fix="re-create those objects with apiVersion traefik.io/v1alpha1",
        sources=(
            "https://docs.k3s.io/release-notes/v1.32.X#release-v1322k3s1",
            "https://github.com/k3s-io/k3s/issues/11744",
            "https://doc.traefik.io/traefik/v3.0/migration/v2-to-v3-details/",
        ),
    ),
)
FACT = {f.check: f for f in FACTS}


# -- predicates: True / False, or None when the version cannot tell ------------------------------
def servicelb_ignores_etp_local(v: Version) -> bool | None:
    line = v.line
    if line is None or v.patch is None:
        return None
    if line < _SERVICELB_FIRST_LINE:
        return True
    if line > _SERVICELB_FIXED_AFTER:
        return False
    fixed = SERVICELB_ETP_FIXED.get(line)
    if fixed is None:  # 1.x with x outside every known line: not k3s as we know it
        return None
    ok = v.at_least(fixed)
    return None if ok is None else not ok


def servicelb_fixed_in(v: Version) -> str:
    """The first fixed release on ``v``'s line (what to upgrade to)."""
    line = v.line
    fixed = SERVICELB_ETP_FIXED.get(line) if line is not None else None
    if fixed is None:
        return "v1.26.2+k3s1 or later"
    return "v{}.{}.{}+k3s1".format(*fixed)


def generic_clf_active(v: Version) -> bool | None:
    """Traefik knows ``genericCLF`` (older versions fall back to ``common``)."""
    return v.at_least(GENERIC_CLF_SINCE)


def k3s_bundles_traefik_v3(v: Version) -> bool | None:
    return v.at_least(K3S_TRAEFIK_V3_SINCE)


def traefik_v3(v: Version) -> bool | None:
    return v.at_least((3, 0, 0))
