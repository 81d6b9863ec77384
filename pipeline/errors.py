"""Errors that map to exit code 2 with a one-line message (usage, config, input)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad invocation, config or input file; the message names the flag, key or file."""


class ConfigError(UsageError):
    """A config key is unknown or has a bad value; the message names the key."""


class FatalSourceError(Exception):
    """A source cannot work with this config (e.g. the LAPI refuses the key): stop, exit 2."""
