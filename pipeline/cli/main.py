"""``auditor`` command line: one sub-command per module, registered from ``COMMANDS``.

Each command module exposes ``register(subparsers)``; it sets ``func`` on its parser to a callable
taking the parsed namespace and returning the exit code. Modules keep heavy imports (Kubernetes,
Kafka) inside their handlers so that ``auditor replay`` stays small.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

import pipeline
from pipeline.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError

COMMANDS: tuple[str, ...] = (
    "pipeline.cli.replay",
    "pipeline.cli.run",
    "pipeline.cli.check",
    "pipeline.cli.allowlist",
    "pipeline.cli.aggregate",
    "pipeline.cli.discover",
    "pipeline.cli.completion",
)


class _Version(argparse.Action):
    """``--version``, reading the version only when asked (see ``pipeline.__getattr__``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"{parser.prog} {pipeline.__version__}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="auditor",
        description="Flags CrowdSec bans on internal cluster addresses and client-IP masking.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (auditor completion)
        from pipeline.cli.completion import complete

        complete(parser)
    args = parser.parse_args(argv)
    func = cast("Callable[[argparse.Namespace], int]", args.func)
    try:
        return func(args)
    except UsageError as exc:
        print(f"auditor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        from pipeline.cli.extras import EXTRAS, missing_extra_message

        module = (exc.name or "").split(".")[0]
        if module not in EXTRAS:
            raise
        why = f"auditor {getattr(args, 'command', '')}".strip()
        print(f"auditor: error: {missing_extra_message(module, why)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
