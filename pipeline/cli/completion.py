"""``auditor completion bash|zsh|fish``: the script that makes the shell complete commands,
flags and their choices.

The script calls ``auditor`` back with ``_ARGCOMPLETE`` set; only then does ``main`` import
argcomplete, so neither the sidecar nor ``auditor replay`` ever loads it.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import EXIT_OK, UsageError

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print the completion script for your shell. bash: "
        "'eval \"$(auditor completion bash)\"' in ~/.bashrc; zsh: the same in ~/.zshrc; fish: "
        "'auditor completion fish > ~/.config/fish/completions/auditor.fish'.",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=run_completion)


def run_completion(args: argparse.Namespace) -> int:
    try:
        from argcomplete.shell_integration import shellcode
    except ImportError:
        raise UsageError("shell completion needs argcomplete: pip install argcomplete") from None
    sys.stdout.write(shellcode(["auditor"], shell=args.shell))
    return EXIT_OK


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (called only with ``_ARGCOMPLETE`` set); exits."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)
