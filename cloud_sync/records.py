"""Signed, hash-chained records (cabinet to backend), signed commands and acks (backend to cabinet).

A **record** (version 1) is one JSON object with exactly these members::

    {"v": 1, "cabinet": "cab-demo-01", "seq": 1, "kind": "sale",
     "at": "2026-11-28T10:15:30.123Z", "prev": "000...000",
     "body": {...}, "sig": "<base64url Ed25519 signature, 86 characters>"}

* ``sig`` signs :func:`signing_bytes`: the RFC 8785 canonical bytes of the record
  without ``sig``; it verifies under the cabinet's public key.
* :func:`record_hash` is the lower-case hex SHA-256 of the canonical bytes of the
  whole record, ``sig`` included. ``prev`` of record ``n`` is the hash of record
  ``n - 1``; ``prev`` of record 1 is 64 zeros (:data:`ZERO_HASH`).
* ``seq`` runs 1, 2, 3, ... per cabinet without gaps (the outbox seq).

``docs/protocol.md`` is the full specification, with a worked example.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping, MutableSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cloud_sync.canonical import (
    MAX_SAFE_INTEGER,
    b64url_decode,
    b64url_encode,
    canonical_bytes,
    parse_json,
    sha256_hex,
)
from cloud_sync.errors import (
    BadSignature,
    ChainBroken,
    Expired,
    MalformedMessage,
    Replayed,
    WrongCabinet,
)
from cloud_sync.topics import validate_cabinet_id

__all__ = [
    "ACK_FIELDS",
    "COMMAND_FIELDS",
    "DEFAULT_MAX_COMMAND_TTL",
    "RECORD_FIELDS",
    "RECORD_KINDS",
    "VERSION",
    "ZERO_HASH",
    "ChainProblem",
    "ChainReport",
    "ProblemReason",
    "RecordKind",
    "check_ack",
    "check_command",
    "check_record",
    "format_at",
    "new_nonce",
    "parse_at",
    "parse_record",
    "record_hash",
    "seal",
    "seal_ack",
    "seal_command",
    "signing_bytes",
    "verified_record_bytes",
    "verify_ack",
    "verify_chain",
    "verify_command",
    "verify_next",
    "verify_record",
]

#: The envelope version this module reads and writes.
VERSION: Final = 1
#: ``prev`` of the first record (seq 1) of every cabinet.
ZERO_HASH: Final = "0" * 64

RecordKind = Literal["sale", "event"]
RECORD_KINDS: Final = frozenset(get_args(RecordKind))

#: Members of a record, a command and an ack (exactly these, no others).
RECORD_FIELDS: Final = frozenset({"v", "cabinet", "seq", "kind", "at", "prev", "body", "sig"})
COMMAND_FIELDS: Final = frozenset({"v", "cabinet", "name", "args", "nonce", "expires", "sig"})
ACK_FIELDS: Final = frozenset({"v", "cabinet", "upto", "head", "sig"})

#: A command whose expiry is further ahead than this is refused (it bounds how
#: long a cabinet must remember nonces, and catches a wrong clock).
DEFAULT_MAX_COMMAND_TTL: Final = timedelta(hours=24)

_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_HASH = re.compile(r"[0-9a-f]{64}")
_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SIG_LEN: Final = 64


# --------------------------------------------------------------------------- time


def format_at(at: datetime | str) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``: ``2026-11-28T10:15:30.123Z``.

    A datetime must be timezone-aware (a naive one is refused: it is too easily
    local time); it is converted to UTC and truncated to the millisecond. A string
    must already be in this exact form and is returned unchanged.
    """
    if isinstance(at, datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"naive datetime {at!r}: give a timezone-aware time (UTC)")
        at = at.astimezone(UTC)
        return f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"
    parse_at(at)
    return at


def parse_at(text: object, what: str = "at") -> datetime:
    """Parse a :func:`format_at` string (aware, UTC); else :class:`MalformedMessage`."""
    if not isinstance(text, str) or not _AT.fullmatch(text):
        raise MalformedMessage(
            f"{what} must be UTC ISO 8601 with milliseconds, like 2026-11-28T10:15:30.123Z; "
            f"got {text!r}"
        )
    try:
        if text.isascii():  # the fields sit at fixed places: no strptime needed
            return datetime(
                int(text[0:4]),
                int(text[5:7]),
                int(text[8:10]),
                int(text[11:13]),
                int(text[14:16]),
                int(text[17:19]),
                int(text[20:23]) * 1000,
                tzinfo=UTC,
            )
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise MalformedMessage(f"{what} {text!r} is not a valid date and time") from None


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now!r}: give a timezone-aware time (UTC)")
    return now


# ------------------------------------------------------------------ field checks


def _fields(obj: object, expected: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedMessage(f"a {what} must be a JSON object, not {type(obj).__name__}")
    keys = set(obj)
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(str(k) for k in keys - expected)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(extra))
        raise MalformedMessage(f"{what}: " + "; ".join(parts))
    if type(obj["v"]) is not int or obj["v"] != VERSION:
        raise MalformedMessage(f"{what}: unsupported version v={obj['v']!r} (this reads v=1)")
    validate_cabinet_id(obj["cabinet"])
    return obj


def _positive_int(value: object, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_SAFE_INTEGER:
        raise MalformedMessage(f"{what} must be an integer from 1 to 2^53 - 1, got {value!r}")
    return value


def _hash(value: object, what: str) -> str:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise MalformedMessage(f"{what} must be 64 lower-case hex digits, got {value!r}")
    return value


def _sig(obj: Mapping[str, Any], what: str) -> bytes:
    return b64url_decode(obj["sig"], length=_SIG_LEN, what=f"{what} sig")


def _without_sig(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "sig"}


def _sign(unsigned: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    signed = dict(unsigned)
    signed["sig"] = b64url_encode(private_key.sign(canonical_bytes(unsigned)))
    return signed


def _verify_sig(
    obj: Mapping[str, Any], sig: bytes, public_key: Ed25519PublicKey, what: str
) -> None:
    try:
        public_key.verify(sig, canonical_bytes(_without_sig(obj)))
    except InvalidSignature:
        raise BadSignature(f"{what}: signature does not verify under the given key") from None


def _copy_json(value: object) -> Any:
    """A deep copy of a JSON value through its canonical form (refusing non-JSON)."""
    return parse_json(canonical_bytes(value))


# ------------------------------------------------------------------------ records


def check_record(record: object) -> Mapping[str, Any]:
    """Check a record's shape (not its signature); returns it, else :class:`MalformedMessage`."""
    rec = _check_record_shape(record)
    canonical_bytes(rec)  # NotCanonical (a MalformedMessage) names the bad value
    return rec


def verified_record_bytes(record: object, public_key: Ed25519PublicKey) -> bytes:
    """Shape and signature of one record, checked with one canonicalisation; returns the
    record's canonical bytes (whose SHA-256 is its :func:`record_hash`).

    The signed bytes are the canonical bytes without the ``sig`` member, which, since
    members are sorted (``... "seq", "sig", "v"``), is the canonical text with
    ``,"sig":"..."`` cut out before its final ``,"v":1}``. Raises like :func:`verify_record`.
    """
    rec, sig = _record_shape(record)
    full = canonical_bytes(rec)
    tail = b',"sig":"' + rec["sig"].encode("ascii") + b'","v":1}'
    if not full.endswith(tail):  # pragma: no cover - the member order is fixed
        what = f"record seq {rec['seq']} of {rec['cabinet']}"
        _verify_sig(rec, sig, public_key, what)
        return full
    signed = full[: -len(tail)] + b',"v":1}'
    try:
        public_key.verify(sig, signed)
    except InvalidSignature:
        what = f"record seq {rec['seq']} of {rec['cabinet']}"
        raise BadSignature(f"{what}: signature does not verify under the given key") from None
    return full


def _check_record_shape(record: object) -> Mapping[str, Any]:
    return _record_shape(record)[0]


def _record_shape(record: object) -> tuple[Mapping[str, Any], bytes]:
    """The record's shape checked; returns it and its decoded signature."""
    rec = _fields(record, RECORD_FIELDS, "record")
    seq = _positive_int(rec["seq"], "record seq")
    what = f"record seq {seq}"
    if rec["kind"] not in RECORD_KINDS:
        raise MalformedMessage(f"{what}: kind must be 'sale' or 'event', got {rec['kind']!r}")
    parse_at(rec["at"], f"{what} at")
    _hash(rec["prev"], f"{what} prev")
    if not isinstance(rec["body"], dict):
        raise MalformedMessage(f"{what}: body must be a JSON object")
    return rec, _sig(rec, what)


def seal(
    cabinet_id: str,
    seq: int,
    kind: RecordKind,
    at: datetime | str,
    prev_hash: str,
    body: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Build and sign record ``seq`` of ``cabinet_id``; the result passes :func:`verify_record`.

    ``prev_hash`` is :func:`record_hash` of record ``seq - 1`` (:data:`ZERO_HASH` for
    seq 1); ``body`` must be a JSON object (it is deep-copied). Bad arguments raise
    :class:`~cloud_sync.errors.MalformedMessage` (or its subclasses) or ValueError.
    """
    if seq == 1 and prev_hash != ZERO_HASH:
        raise MalformedMessage("record seq 1 must have prev = ZERO_HASH (64 zeros)")
    if not isinstance(body, Mapping):
        raise MalformedMessage("record body must be a JSON object")
    unsigned = {
        "v": VERSION,
        "cabinet": cabinet_id,
        "seq": seq,
        "kind": kind,
        "at": format_at(at),
        "prev": prev_hash,
        "body": _copy_json(dict(body)),
    }
    record = _sign(unsigned, private_key)
    check_record(record)
    return record


def signing_bytes(record: Mapping[str, Any]) -> bytes:
    """What ``sig`` signs: canonical bytes of the record without ``sig``."""
    return canonical_bytes(_without_sig(record))


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical bytes of the whole signed record (``sig`` included)."""
    check_record(record)
    return sha256_hex(canonical_bytes(record))


def verify_record(record: object, public_key: Ed25519PublicKey) -> None:
    """Check shape and signature of one record (not its place in the chain).

    Raises :class:`~cloud_sync.errors.MalformedMessage` or
    :class:`~cloud_sync.errors.BadSignature`.
    """
    rec = check_record(record)
    what = f"record seq {rec['seq']} of {rec['cabinet']}"
    _verify_sig(rec, _sig(rec, what), public_key, what)


def parse_record(data: str | bytes) -> dict[str, Any]:
    """One record from its JSON text (a wire message or a ledger line), shape-checked."""
    value = parse_json(data)
    check_record(value)
    result: dict[str, Any] = value
    return result


def verify_next(
    record: object,
    public_key: Ed25519PublicKey,
    *,
    cabinet_id: str,
    head_seq: int,
    head_hash: str,
) -> str:
    """Check that ``record`` is the next record after a known chain head; return its hash.

    The head of a cabinet with no records yet is ``head_seq=0, head_hash=ZERO_HASH``.
    Raises :class:`~cloud_sync.errors.MalformedMessage`,
    :class:`~cloud_sync.errors.WrongCabinet`, :class:`~cloud_sync.errors.BadSignature`,
    or :class:`~cloud_sync.errors.ChainBroken` (``problem`` ``seq_gap`` when records are
    missing in between, ``stale`` for a seq at or below the head (look it up: the
    same hash is a redelivery, another is a fork), ``prev_mismatch`` for a fork).
    """
    rec = check_record(record)
    seq: int = rec["seq"]
    if rec["cabinet"] != cabinet_id:
        raise WrongCabinet(f"record seq {seq} is from {rec['cabinet']!r}, not {cabinet_id!r}")
    verify_record(rec, public_key)
    if seq <= head_seq:
        raise ChainBroken(
            f"record seq {seq} is at or below the head seq {head_seq}", seq=seq, problem="stale"
        )
    if seq != head_seq + 1:
        raise ChainBroken(
            f"record seq {seq} does not follow head seq {head_seq}: "
            f"{_seq_list(list(range(head_seq + 1, seq)))} missing",
            seq=seq,
            problem="seq_gap",
        )
    if rec["prev"] != head_hash:
        raise ChainBroken(
            f"record seq {seq}: prev {rec['prev'][:16]}... is not the hash "
            f"{head_hash[:16]}... of seq {head_seq} (a fork)",
            seq=seq,
            problem="prev_mismatch",
        )
    return sha256_hex(canonical_bytes(rec))


# --------------------------------------------------------------------------- chains

ProblemReason = Literal[
    "malformed",
    "wrong_cabinet",
    "bad_signature",
    "out_of_order",
    "seq_gap",
    "prev_mismatch",
    "conflicting_duplicate",
]


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One break found by :func:`verify_chain`."""

    #: the seq it concerns (None when the record had no readable seq)
    seq: int | None
    reason: ProblemReason
    detail: str
    #: position of the record in the input (0-based)
    index: int

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else f"record #{self.index + 1}"
        return f"{where}: {self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What :func:`verify_chain` found."""

    #: the cabinet whose chain this is (None when no record named one)
    cabinet: str | None
    #: records given
    count: int
    #: distinct records whose shape, cabinet and signature are good
    verified: int
    #: lowest and highest verified seq
    first_seq: int | None
    last_seq: int | None
    #: :func:`record_hash` of the verified record with the highest seq
    head_hash: str | None
    #: linked runs: 1 for an intact chain; each gap, fork or unreadable record starts another
    segments: int
    #: seqs given more than once with identical content (at-least-once redelivery; harmless)
    duplicates: tuple[int, ...] = ()
    problems: tuple[ChainProblem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when nothing is broken (identical duplicates are not breaks)."""
        return not self.problems

    def reasons(self) -> set[str]:
        """The distinct problem reasons."""
        return {p.reason for p in self.problems}

    def raise_if_broken(self) -> None:
        """Raise :class:`~cloud_sync.errors.ChainBroken` for the first problem, if any."""
        if self.problems:
            p = self.problems[0]
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise ChainBroken(f"{p}{more}", seq=p.seq, problem=p.reason)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "ok": self.ok,
            "cabinet": self.cabinet,
            "records": self.count,
            "verified": self.verified,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "chains": self.segments,
            "duplicates": list(self.duplicates),
            "problems": [
                {"seq": p.seq, "reason": p.reason, "detail": p.detail, "index": p.index}
                for p in self.problems
            ],
        }


@dataclass(slots=True)
class _Candidate:
    index: int
    record: Mapping[str, Any]
    hash: str


def _seq_list(seqs: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"seq 3-5, 9"``."""
    runs: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    if len(runs) > 10:
        runs = [*runs[:10], "..."]
    return "seq " + ", ".join(runs)


def verify_chain(
    records: Iterable[object],
    public_key: Ed25519PublicKey,
    *,
    cabinet_id: str | None = None,
) -> ChainReport:
    """Verify a cabinet's records as a chain; never raises for what the records hold.

    ``records`` are expected in ascending seq order (a ledger). Every record is
    checked for shape, cabinet (``cabinet_id``, or else the cabinet most records
    name) and signature; then the good ones are walked in seq order checking that
    seqs have no gaps, that ``prev`` is the hash of the record before (64 zeros for
    seq 1), and that no seq has two different records. A chain may start after
    seq 1 (an export of the unacked tail); its first ``prev`` is then unchecked.

    Problem reasons: ``malformed``, ``wrong_cabinet``, ``bad_signature``,
    ``out_of_order`` (a seq after a higher one), ``seq_gap``, ``prev_mismatch`` (a
    fork: the record does not link to the one before it), ``conflicting_duplicate``
    (two different records with one seq). A record dropped in the middle shows as
    ``seq_gap``; records dropped at the end cannot be seen from the records alone:
    compare ``last_seq``/``head_hash`` with what the cabinet or the ack says.
    """
    items = list(records)
    problems: list[ChainProblem] = []
    wellformed: list[tuple[int, Mapping[str, Any]]] = []
    #: seqs held by records that are there but unreadable: not "missing"
    invalid_seqs: set[int] = set()
    for index, rec in enumerate(items):
        try:
            wellformed.append((index, check_record(rec)))
        except MalformedMessage as exc:
            raw_seq = rec.get("seq") if isinstance(rec, dict) else None
            seq_or_none = raw_seq if type(raw_seq) is int else None
            if seq_or_none is not None:
                invalid_seqs.add(seq_or_none)
            problems.append(ChainProblem(seq_or_none, "malformed", str(exc), index))
    if cabinet_id is None and wellformed:
        cabinet_id = Counter(str(r["cabinet"]) for _, r in wellformed).most_common(1)[0][0]

    candidates: dict[int, list[_Candidate]] = {}
    duplicates: list[int] = []
    max_seq = 0
    for index, rec in wellformed:
        seq: int = rec["seq"]
        if rec["cabinet"] != cabinet_id:
            problems.append(
                ChainProblem(
                    seq,
                    "wrong_cabinet",
                    f"record is from {rec['cabinet']!r}, this chain is {cabinet_id!r}",
                    index,
                )
            )
            continue
        try:
            verify_record(rec, public_key)
        except BadSignature:
            problems.append(
                ChainProblem(seq, "bad_signature", "signature does not verify under the key", index)
            )
            invalid_seqs.add(seq)
            continue
        h = sha256_hex(canonical_bytes(rec))
        same_seq = candidates.setdefault(seq, [])
        if any(c.hash == h for c in same_seq):
            duplicates.append(seq)
            continue
        if seq < max_seq:
            problems.append(
                ChainProblem(
                    seq, "out_of_order", f"record #{index + 1} comes after seq {max_seq}", index
                )
            )
        max_seq = max(max_seq, seq)
        same_seq.append(_Candidate(index, rec, h))

    head_seq: int | None = None
    head_hash: str | None = None
    segments = 0
    for seq in sorted(candidates):
        cands = candidates[seq]
        if seq == 1:
            expected: str | None = ZERO_HASH
        elif head_seq == seq - 1:
            expected = head_hash
        else:
            expected = None
        chosen = cands[0]
        if len(cands) > 1:
            linking = [c for c in cands if c.record["prev"] == expected]
            if linking:
                chosen = linking[0]
            hashes = ", ".join(c.hash[:16] + "..." for c in cands)
            problems.append(
                ChainProblem(
                    seq,
                    "conflicting_duplicate",
                    f"{len(cands)} different validly signed records claim seq {seq} ({hashes})",
                    cands[1].index,
                )
            )
        if head_seq is not None and seq != head_seq + 1:
            missing = [s for s in range(head_seq + 1, seq) if s not in invalid_seqs]
            if missing:
                problems.append(
                    ChainProblem(
                        seq,
                        "seq_gap",
                        f"{_seq_list(missing)} missing before seq {seq}",
                        chosen.index,
                    )
                )
        linked = expected is not None and chosen.record["prev"] == expected
        if expected is not None and not linked:
            if seq == 1:
                detail = "seq 1 must have prev = 64 zeros"
            else:
                detail = (
                    f"prev {chosen.record['prev'][:16]}... is not the hash "
                    f"{expected[:16]}... of seq {seq - 1} (a fork)"
                )
            problems.append(ChainProblem(seq, "prev_mismatch", detail, chosen.index))
        if not linked or segments == 0:
            segments += 1
        head_seq, head_hash = seq, chosen.hash

    problems.sort(key=lambda p: (p.seq if p.seq is not None else -1, p.index))
    seqs = sorted(candidates)
    return ChainReport(
        cabinet=cabinet_id,
        count=len(items),
        verified=sum(len(c) for c in candidates.values()),
        first_seq=seqs[0] if seqs else None,
        last_seq=head_seq,
        head_hash=head_hash,
        segments=segments,
        duplicates=tuple(duplicates),
        problems=tuple(problems),
    )


# ------------------------------------------------------------------------ commands


def new_nonce() -> str:
    """A fresh random command nonce (128 bits, 22 base64url characters)."""
    return secrets.token_urlsafe(16)


def check_command(cmd: object) -> Mapping[str, Any]:
    """Check a command's shape (not its signature); returns it, else :class:`MalformedMessage`."""
    c = _fields(cmd, COMMAND_FIELDS, "command")
    if not isinstance(c["name"], str) or not _COMMAND_NAME.fullmatch(c["name"]):
        raise MalformedMessage(
            f"command name must be 1-32 of a-z 0-9 _ starting with a letter, got {c['name']!r}"
        )
    if not isinstance(c["args"], dict):
        raise MalformedMessage("command args must be a JSON object")
    if not isinstance(c["nonce"], str) or not _NONCE.fullmatch(c["nonce"]):
        raise MalformedMessage(
            f"command nonce must be 16-64 base64url characters, got {c['nonce']!r}"
        )
    parse_at(c["expires"], "command expires")
    _sig(c, "command")
    canonical_bytes(c)
    return c


def seal_command(
    cabinet_id: str,
    name: str,
    args: Mapping[str, Any],
    nonce: str,
    expires_at: datetime | str,
    private_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Build and sign a command for ``cabinet_id`` with the backend's key.

    ``nonce`` must be unique per command (:func:`new_nonce`); ``expires_at`` is when
    the cabinet must stop accepting it (keep it short: an unlock lives seconds).
    """
    if not isinstance(args, Mapping):
        raise MalformedMessage("command args must be a JSON object")
    unsigned = {
        "v": VERSION,
        "cabinet": cabinet_id,
        "name": name,
        "args": _copy_json(dict(args)),
        "nonce": nonce,
        "expires": format_at(expires_at),
    }
    cmd = _sign(unsigned, private_key)
    check_command(cmd)
    return cmd


def verify_command(
    cmd: object,
    public_key: Ed25519PublicKey,
    now: datetime,
    seen_nonces: MutableSet[str],
    *,
    cabinet_id: str | None = None,
    max_ttl: timedelta | None = DEFAULT_MAX_COMMAND_TTL,
    remember: bool = True,
) -> None:
    """Accept a command or raise why not; checks run in this order:

    1. shape: :class:`~cloud_sync.errors.MalformedMessage`;
    2. addressee: :class:`~cloud_sync.errors.WrongCabinet` when ``cabinet_id`` is
       given and the command is for another cabinet;
    3. signature under the backend's ``public_key``: :class:`~cloud_sync.errors.BadSignature`;
    4. time: :class:`~cloud_sync.errors.Expired` when ``now >= expires``, or when
       ``expires`` is more than ``max_ttl`` after ``now``;
    5. nonce: :class:`~cloud_sync.errors.Replayed` when it is in ``seen_nonces``.

    On success the nonce is added to ``seen_nonces`` (unless ``remember=False``);
    a nonce can be forgotten once its command has expired. Nothing is remembered
    for a refused command, so a forgery cannot burn a genuine nonce.
    """
    now = _aware(now)
    c = check_command(cmd)
    what = f"command {c['name']} ({c['nonce']})"
    if cabinet_id is not None and c["cabinet"] != cabinet_id:
        raise WrongCabinet(f"{what} is for cabinet {c['cabinet']!r}, not {cabinet_id!r}")
    _verify_sig(c, _sig(c, what), public_key, what)
    expires = parse_at(c["expires"])
    if now >= expires:
        raise Expired(f"{what} expired at {c['expires']} (now {format_at(now)})")
    if max_ttl is not None and expires - now > max_ttl:
        raise Expired(
            f"{what} expires at {c['expires']}, more than {max_ttl} after now "
            f"({format_at(now)}): refused (is a clock wrong?)"
        )
    if c["nonce"] in seen_nonces:
        raise Replayed(f"{what}: nonce already used")
    if remember:
        seen_nonces.add(c["nonce"])


# ---------------------------------------------------------------------------- acks


def check_ack(ack: object) -> Mapping[str, Any]:
    """Check an ack's shape (not its signature); returns it, else :class:`MalformedMessage`."""
    a = _fields(ack, ACK_FIELDS, "ack")
    _positive_int(a["upto"], "ack upto")
    _hash(a["head"], "ack head")
    _sig(a, "ack")
    return a


def seal_ack(
    cabinet_id: str, upto: int, head: str, private_key: Ed25519PrivateKey
) -> dict[str, Any]:
    """Sign "every record of ``cabinet_id`` up to seq ``upto`` is stored; ``head`` is its hash"."""
    unsigned = {"v": VERSION, "cabinet": cabinet_id, "upto": upto, "head": head}
    ack = _sign(unsigned, private_key)
    check_ack(ack)
    return ack


def verify_ack(ack: object, public_key: Ed25519PublicKey, *, cabinet_id: str | None = None) -> int:
    """Check an ack's shape, addressee and backend signature; return ``upto``.

    The cabinet then drops outbox records with seq <= ``upto`` (and should compare
    ``head`` with its own hash of that record: a difference means the backend
    stored something else, a fork). Raises like :func:`verify_command`.
    """
    a = check_ack(ack)
    what = f"ack upto {a['upto']}"
    if cabinet_id is not None and a["cabinet"] != cabinet_id:
        raise WrongCabinet(f"{what} is for cabinet {a['cabinet']!r}, not {cabinet_id!r}")
    _verify_sig(a, _sig(a, what), public_key, what)
    upto: int = a["upto"]
    return upto
