"""Exit codes, and the errors that map to exit code 2 with a one-line message."""

from __future__ import annotations

# The documented exit codes (README "Exit codes"); every command returns one of these.
EXIT_OK = 0
EXIT_FINDINGS = 1  # findings at or above --fail-on
EXIT_USAGE = 2  # bad flag, key, file or input; also a live command stopped by a failure
EXIT_INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """Bad invocation, config or input file; the message names the flag, key or file."""


class ConfigError(UsageError):
    """A config key is unknown or has a bad value; the message names the key."""


class FatalSourceError(Exception):
    """A source cannot work with this config (e.g. the LAPI refuses the key): stop, exit 2."""
