"""Build the ban-auditor container image with no network inside the build (`make image`).

The build context is a fresh directory of wheels made here, on the host: the project's own
wheel plus its runtime dependencies, downloaded for the *base image's* CPython, glibc and CPU
(asked from the base itself), so the host's Python does not decide what lands in the image and
the build runs with `--network none`. The image reference is printed as the last line of
stdout; everything else goes to stderr.

`--debootstrap-base` builds (once, then reuses) a Debian bookworm base with python3 from the
Debian mirror apt already uses, for machines that reach Debian's packages but no container
registry (CI). Needs root and debootstrap.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
REPOSITORY = "ghcr.io/ban-auditor/ban-auditor"
DEFAULT_BASE = "docker.io/library/python:3.12-slim"
DEBOOTSTRAP_BASE = "localhost/ban-auditor-base:bookworm"
SUITE = "bookworm"
# Podman asks the runtime for 1048576 open files, which fails wherever the caller's hard limit
# is lower (sandboxes, CI runners: "error setting rlimit type 7"). Builds and the auditor need
# far fewer; docker accepts the same flags.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
PROBE = (
    "import platform, sys; "
    "print(sys.version_info[0], sys.version_info[1], platform.libc_ver()[1] or '-', "
    "platform.machine())"
)


class BuildError(RuntimeError):
    """A step failed; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Target:
    """What the base image runs wheels on: CPython version, glibc version, CPU."""

    python: tuple[int, int]
    glibc: tuple[int, int]
    machine: str

    def pip_flags(self) -> list[str]:
        """`pip download` flags that select wheels for this target (manylinux up to its glibc)."""
        major, minor = self.python
        flags = [
            "--only-binary=:all:",
            "--implementation=cp",
            f"--python-version={major}.{minor}",
            f"--abi=cp{major}{minor}",
        ]
        platforms = [f"manylinux_2_{m}_{self.machine}" for m in range(5, self.glibc[1] + 1)]
        platforms += [f"manylinux{alias}_{self.machine}" for alias in ("2014", "2010", "1")]
        return flags + [f"--platform={p}" for p in platforms]


def version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        value: str = tomllib.load(fh)["project"]["version"]
    return value


def default_tag() -> str:
    """The reference the manifests in deploy/ use: the project version from pyproject.toml."""
    return f"{REPOSITORY}:{version()}"


def default_engine() -> list[str]:
    configured = os.environ.get("CONTAINER_ENGINE")
    if configured:
        return shlex.split(configured)
    for name in ("podman", "docker"):
        if shutil.which(name):
            return [name]
    msg = "neither podman nor docker found: install one (Debian: apt-get install podman runc)"
    raise BuildError(msg)


def _run(
    cmd: list[str],
    what: str,
    *,
    capture: bool = False,
    stdin: IO[bytes] | None = None,
) -> str:
    """Run ``cmd``; its output goes to stderr (stdout is for the reference) unless captured."""
    print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    try:
        result = subprocess.run(
            cmd,
            stdin=stdin,
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=subprocess.PIPE if capture else None,
            check=False,
        )
    except FileNotFoundError as exc:
        msg = f"{what}: {cmd[0]} not found"
        raise BuildError(msg) from exc
    out = result.stdout.decode(errors="replace") if capture else ""
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[-2000:] if capture else ""
        msg = f"{what} failed (exit {result.returncode}){': ' + detail if detail else ''}"
        raise BuildError(msg)
    return out


def image_exists(engine: list[str], ref: str) -> bool:
    result = subprocess.run(
        [*engine, "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def debian_mirror() -> str:
    """The Debian archive apt already uses for bookworm's main component."""
    result = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(REPO_URI) $(CODENAME) $(COMPONENT)"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines():
        uri, _, rest = line.partition(" ")
        if rest == f"{SUITE} main":
            return uri
    msg = f"no Debian {SUITE} main archive in apt's sources: pass --mirror URL"
    raise BuildError(msg)


def ensure_debootstrap_base(engine: list[str], ref: str, mirror: str | None) -> str:
    """Reuse ``ref`` if present, else debootstrap a minimal bookworm with python3 into it."""
    if image_exists(engine, ref):
        print(f"reusing base image {ref}", file=sys.stderr)
        return ref
    if shutil.which("debootstrap") is None:
        msg = "--debootstrap-base needs debootstrap (apt-get install debootstrap)"
        raise BuildError(msg)
    if os.geteuid() != 0:
        msg = "--debootstrap-base needs root (debootstrap creates device nodes and chroots)"
        raise BuildError(msg)
    url = mirror or debian_mirror()
    with tempfile.TemporaryDirectory(prefix="ban-auditor-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(rootfs), url],
            "debootstrap",
        )
        # Package caches and lists are ~90 MB the image never uses.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run([*engine, "import", "-", ref], "import of the base", stdin=tar.stdout)
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
    return ref


def probe(engine: list[str], base: str) -> Target:
    """Ask the base image which Python, glibc and CPU it has (pulls it if needed)."""
    out = _run(
        [*engine, "run", "--rm", "--network", "none", *ULIMITS,
         "--entrypoint", "python3", base, "-c", PROBE],
        f"running python3 in {base}",
        capture=True,
    )  # fmt: skip
    fields = out.split()
    if len(fields) != 4 or fields[2] == "-":
        msg = f"{base}: not a glibc image with python3 ({out.strip()!r})"
        raise BuildError(msg)
    major, minor, glibc, machine = fields
    python = (int(major), int(minor))
    if python < (3, 11):
        msg = f"{base}: python {major}.{minor}, the project needs >= 3.11"
        raise BuildError(msg)
    glibc_major, glibc_minor = (int(x) for x in glibc.split(".")[:2])
    return Target(python, (glibc_major, glibc_minor), machine)


def wheels(target: Target, directory: Path) -> None:
    """The project's wheel, its runtime dependencies for ``target``, and pip to install them."""
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "-w", str(directory), str(ROOT)], "pip wheel")
    (own,) = directory.glob("ban_auditor-*.whl")
    _run(
        [*pip, "download", "-q", *target.pip_flags(), "-d", str(directory), f"{own}[all]", "pip"],
        "pip download of the runtime dependencies",
    )


def build(engine: list[str], base: str, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ban-auditor-context-") as tmp:
        context = Path(tmp)
        target = probe(engine, base)
        print(f"base {base}: CPython {target.python}, glibc {target.glibc}", file=sys.stderr)
        wheels(target, context / "wheels")
        _run(
            [*engine, "build", "--network", "none", *ULIMITS,
             "-f", str(DOCKERFILE), "--build-arg", f"BASE={base}",
             "--build-arg", f"VERSION={version()}", "-t", tag, str(context)],
            "image build",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine",
        help="container engine command (default: $CONTAINER_ENGINE, else podman, else docker), "
        'e.g. "podman --runtime runc"',
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--base", default=None, help=f"base image (default {DEFAULT_BASE})")
    source.add_argument(
        "--debootstrap-base",
        action="store_true",
        help=f"build on {DEBOOTSTRAP_BASE}, debootstrapped on first use (root, no registry)",
    )
    parser.add_argument("--mirror", help="Debian mirror for --debootstrap-base (default: apt's)")
    parser.add_argument(
        "--tag", help=f"image reference (default {REPOSITORY}:<version in pyproject.toml>)"
    )
    args = parser.parse_args(argv)
    try:
        engine = shlex.split(args.engine) if args.engine else default_engine()
        if args.debootstrap_base:
            base = ensure_debootstrap_base(engine, DEBOOTSTRAP_BASE, args.mirror)
        else:
            base = args.base or DEFAULT_BASE
        tag = args.tag or default_tag()
        build(engine, base, tag)
    except BuildError as exc:
        print(f"build_image: {exc}", file=sys.stderr)
        return 2
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
