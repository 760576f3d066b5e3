"""The one exception base of the edge package and its subclasses."""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge package raises on purpose."""


class ConfigError(EdgeError):
    """A cabinet configuration (TOML) is malformed; the message names the file and key."""


class InputError(EdgeError):
    """An input file (scenario, trace) is malformed; the message names the line or field."""


class StoreError(EdgeError):
    """The cabinet store is unusable or inconsistent."""


class HardwareError(EdgeError):
    """A hardware backend failed in a way the daemon cannot ride out."""
