"""The one exception base of ``cloud_sync`` and its subclasses.

The subclasses are chosen by what the caller does next, not by where the error
was found:

==========================  ====================================================
exception                   what the caller does
==========================  ====================================================
:class:`MalformedMessage`   drop the message (log it); it will never become valid,
                            so never retry it and never ack it
:class:`NotCanonical`       (a :class:`MalformedMessage`) the value cannot be
                            written as RFC 8785 JSON; ``path`` names the field
:class:`InvalidIdentifier`  (a :class:`MalformedMessage`) a cabinet/supplier id or
                            topic is not allowed; fix the configuration or drop
:class:`BadSignature`       reject and raise an alarm: forged, corrupted in
                            transit, or signed with another key
:class:`ChainBroken`        stop accepting this cabinet's records past the break,
                            keep the evidence, hand it to an operator
:class:`UnknownCabinet`     no key is registered for the cabinet: quarantine
                            the message until the cabinet is provisioned
:class:`WrongCabinet`       the message is addressed to or from another cabinet
                            than the one asking (misrouted or replayed across
                            cabinets): refuse it
:class:`Expired`            a command arrived after its expiry: do not execute,
                            answer ``expired`` on ``cmd/result``
:class:`Replayed`           the command's nonce was already used: do not execute
                            again (it is a duplicate delivery or a replay)
:class:`KeyFileError`       a key file is missing, unreadable, of the wrong kind
                            or readable by others: fix the file
:class:`KeyFileExists`      (a :class:`KeyFileError`) refusing to overwrite a key:
                            choose another path or pass ``--force``
==========================  ====================================================

Every class has a short machine-readable :attr:`SyncError.reason`, which is what a
cabinet reports on ``cmd/result`` when it refuses a command.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadSignature",
    "ChainBroken",
    "Expired",
    "InvalidIdentifier",
    "KeyFileError",
    "KeyFileExists",
    "MalformedMessage",
    "NotCanonical",
    "Replayed",
    "SyncError",
    "UnknownCabinet",
    "WrongCabinet",
]


class SyncError(Exception):
    """Base of every error ``cloud_sync`` raises on purpose."""

    #: short machine-readable reason (``snake_case``), stable across versions
    reason: ClassVar[str] = "sync_error"


class MalformedMessage(SyncError):
    """Not a valid message of this protocol (shape, types, JSON): drop it, never retry."""

    reason = "malformed"


class NotCanonical(MalformedMessage):
    """A value has no RFC 8785 form (NaN, infinity, a non-JSON type, ...).

    ``path`` names the offending value, JSONPath style: ``$.body.lines[0].weight_g``.
    """

    reason = "not_canonical"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class InvalidIdentifier(MalformedMessage):
    """A cabinet or supplier id, or a topic, that the protocol does not allow."""

    reason = "invalid_identifier"


class BadSignature(SyncError):
    """An Ed25519 signature does not verify under the key it must verify under."""

    reason = "bad_signature"


class ChainBroken(SyncError):
    """A record does not continue its cabinet's hash chain (gap, fork, conflict).

    ``seq`` is the sequence number where the break was seen (None if unknown) and
    ``problem`` the reason code of :class:`cloud_sync.records.ChainProblem`.
    """

    reason = "chain_broken"

    def __init__(self, message: str, *, seq: int | None = None, problem: str = "") -> None:
        super().__init__(message)
        self.seq = seq
        self.problem = problem


class UnknownCabinet(SyncError):
    """No public key is registered for this cabinet."""

    reason = "unknown_cabinet"


class WrongCabinet(SyncError):
    """The message belongs to another cabinet than the one it was checked for."""

    reason = "wrong_cabinet"


class Expired(SyncError):
    """A command's expiry has passed (or is implausibly far in the future)."""

    reason = "expired"


class Replayed(SyncError):
    """A command's nonce has been seen before."""

    reason = "replayed"


class KeyFileError(SyncError):
    """A key file cannot be used: missing, unreadable, wrong kind, or too open."""

    reason = "key_file"


class KeyFileExists(KeyFileError):
    """Refusing to overwrite an existing key file."""

    reason = "key_file_exists"
