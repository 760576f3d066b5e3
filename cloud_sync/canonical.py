"""Canonical JSON (RFC 8785, "JCS") and the small encodings the protocol uses.

:func:`canonical_bytes` is the only way a ``cloud_sync`` message becomes bytes for
hashing or signing. Anything without an RFC 8785 form is refused with
:class:`~cloud_sync.errors.NotCanonical` naming the exact place
(``$.body.lines[0].weight_g: NaN is not allowed``); the rest is serialised exactly as
the ``rfc8785`` package does: object members sorted by the UTF-16 code units of their
names, no insignificant whitespace, numbers as ECMAScript prints IEEE 754 doubles
(``4.5``, ``1e+30``, ``0.002``, ``1e-7``, ``-0`` as ``0``), strings as UTF-8 with only
the mandatory escapes.

:func:`parse_json` is the matching strict reader for text that came off the wire:
duplicate member names, ``NaN``/``Infinity`` and lone surrogates are refused, and
integers beyond ±(2^53 − 1) become doubles (what any RFC 8785 producer meant by
them), so ``canonical_bytes(parse_json(canonical_bytes(x))) == canonical_bytes(x)``
for every canonicalisable ``x``.

Both are on the hot path of every record (the cabinet seals, the ingest verifies
thousands a second), so each has a fast path: :func:`canonical_bytes` serialises
in one walk (strings through the C JSON string encoder, whose escapes are exactly
RFC 8785's) and falls back to the checking walk plus ``rfc8785`` whenever anything
is unusual (a lone surrogate, a non-string key, a nesting deeper than
:data:`MAX_DEPTH`, a type that is not JSON), so errors and output are the same as
without it; :func:`parse_json` lets its decoder hooks do the checks and walks the
parsed value only when the text could hide a lone surrogate or a deep nesting.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from json.encoder import encode_basestring as _json_string
from typing import Any, Final, TypeAlias

import rfc8785

from cloud_sync.errors import MalformedMessage, NotCanonical

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "JSONValue",
    "b64url_decode",
    "b64url_encode",
    "canonical_bytes",
    "parse_json",
    "sha256_hex",
]

#: A JSON value as Python holds it.
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

#: Largest integer magnitude a double holds exactly (RFC 8785 section 3.2.2.3, I-JSON).
MAX_SAFE_INTEGER: Final = 2**53 - 1
#: Deepest nesting accepted (protects against cycles and stack exhaustion).
MAX_DEPTH: Final = 64

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


# ------------------------------------------------------------------ canonical JSON


def canonical_bytes(obj: object) -> bytes:
    """``obj`` as RFC 8785 canonical JSON (UTF-8 bytes).

    Accepts ``None``, ``bool``, ``int`` (|n| <= 2^53 - 1), finite ``float``, ``str``
    (valid Unicode), ``list``/``tuple`` and ``dict`` with ``str`` keys, nested at most
    :data:`MAX_DEPTH` deep. Anything else raises
    :class:`~cloud_sync.errors.NotCanonical` whose ``path`` names the value.
    """
    try:
        return _encode(obj, 0).encode("utf-8")
    except (_Unusual, UnicodeEncodeError, TypeError, ValueError, RecursionError):
        pass
    # the careful way: names the offending value, or serialises what the fast path refused
    _check(obj, "$", 0)
    try:
        return rfc8785.dumps(obj)  # type: ignore[arg-type]
    except rfc8785.CanonicalizationError as exc:  # pragma: no cover - _check is stricter
        raise NotCanonical("$", str(exc)) from exc


class _Unusual(Exception):
    """The fast serialiser leaves this value to the careful path."""


def _encode(obj: object, depth: int) -> str:
    """The canonical text of ``obj``; raises :class:`_Unusual` (or lets ``TypeError`` and
    ``UnicodeEncodeError`` through) for anything but plain JSON values.

    Strings, in-range integers and containers of plain types are handled inline: most
    values are leaves, and a call per leaf would cost more than the leaf.
    """
    t = type(obj)
    if t is dict:
        if depth >= MAX_DEPTH:  # its members would be deeper than MAX_DEPTH
            raise _Unusual
        d: dict[str, Any] = obj  # type: ignore[assignment]
        if not d:
            return "{}"
        keys = sorted(d)  # TypeError for keys of mixed types
        # "".join: TypeError for keys that are not strings; str subclasses go the careful way
        if not "".join(keys).isascii():
            # RFC 8785 orders by UTF-16 code units (a lone surrogate: UnicodeEncodeError)
            keys.sort(key=_utf16)
        if len(set(map(type, keys))) != 1 or type(keys[0]) is not str:
            raise _Unusual
        parts = []
        inner = depth + 1
        for k in keys:
            v = d[k]
            tv = type(v)
            if tv is str:
                parts.append(_json_string(k) + ":" + _json_string(v))
            elif tv is int and -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
                parts.append(_json_string(k) + ":" + int.__repr__(v))
            else:
                parts.append(_json_string(k) + ":" + _encode(v, inner))
        return "{" + ",".join(parts) + "}"
    if t is str:
        return _json_string(obj)  # type: ignore[arg-type]
    if t is int:
        n: int = obj  # type: ignore[assignment]
        if -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER:
            return int.__repr__(n)
        raise _Unusual
    if t is float:
        return _number(obj)  # type: ignore[arg-type]
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Unusual
        items: list[Any] | tuple[Any, ...] = obj  # type: ignore[assignment]
        if not items:
            return "[]"
        inner = depth + 1
        return "[" + ",".join([_encode(v, inner) for v in items]) + "]"
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    raise _Unusual  # subclasses (enums...), other types: the careful path decides


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be")


def _number(f: float) -> str:
    """A finite double as ECMAScript's ``Number.prototype.toString`` writes it
    (ECMA-262 section 7.1.12.1, RFC 8785 section 3.2.2.3); :class:`_Unusual` for NaN and
    infinities."""
    if f != f or f in (math.inf, -math.inf):
        raise _Unusual
    if f == 0.0:
        return "0"  # -0 too
    text = float.__repr__(f)  # the shortest digits that round-trip, as ECMAScript picks them
    if "e" not in text:  # repr writes 1e-4 <= |f| < 1e16 positionally, as ECMAScript does
        return text[:-2] if text.endswith(".0") else text
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).rstrip("0") or "0"  # whole is one non-zero digit in repr
    k = len(digits)
    n = int(exp_text) + 1  # the value is 0.DIGITS x 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    exponent = f"e+{e}" if e >= 0 else f"e-{-e}"
    if k == 1:
        return sign + digits + exponent
    return sign + digits[0] + "." + digits[1:] + exponent


def _child(path: str, key: str) -> str:
    if _IDENT.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _check(obj: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise NotCanonical(path, f"nested deeper than {MAX_DEPTH} levels (a cycle?)")
    if obj is None or isinstance(obj, bool):
        return
    if isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise NotCanonical(
                path, f"integer {obj} is outside ±(2^53 − 1), which JSON numbers hold exactly"
            )
        return
    if isinstance(obj, float):
        if math.isnan(obj):
            raise NotCanonical(path, "NaN is not allowed in canonical JSON (RFC 8785)")
        if math.isinf(obj):
            raise NotCanonical(path, f"{obj} is not allowed in canonical JSON (RFC 8785)")
        return
    if isinstance(obj, str):
        _check_str(obj, path)
        return
    if isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            _check(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise NotCanonical(
                    path, f"object key {key!r} is a {type(key).__name__}, not a string"
                )
            _check_str(key, path)
            _check(value, _child(path, key), depth + 1)
        return
    raise NotCanonical(path, f"a {type(obj).__name__} is not a JSON value")


def _check_str(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotCanonical(
            path, f"string has a lone surrogate at index {exc.start}, not valid Unicode"
        ) from None


# ------------------------------------------------------------------ strict parsing


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedMessage(f"duplicate member name {key!r}")
            seen.add(key)
    return out


def _constant(name: str) -> Any:
    raise MalformedMessage(f"{name} is not JSON")


def _int(text: str) -> int | float:
    n = int(text)
    if -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER:
        return n
    f = float(text)
    if math.isinf(f):
        raise MalformedMessage(f"number {text[:40]} is out of range")
    return f


def _float(text: str) -> float:
    f = float(text)
    if math.isinf(f):
        raise MalformedMessage(f"number {text[:40]} is out of range")
    return f


#: One decoder for every call (``json.loads`` with hooks would build one per call);
#: a decoder keeps no state between calls, like ``json``'s own shared default one.
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_pairs,
    parse_constant=_constant,
    parse_int=_int,
    parse_float=_float,
)
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(data: str | bytes) -> Any:
    """Parse one JSON text strictly (see the module docstring).

    Raises :class:`~cloud_sync.errors.MalformedMessage` with the JSON error's
    position for anything that is not a single valid I-JSON text.
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"not UTF-8 (byte {exc.start})") from None
        raw_surrogates = False  # valid UTF-8 never encodes a surrogate
    else:
        text = data
        raw_surrogates = not text.isascii()
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise MalformedMessage("JSON nested too deeply") from None
    # The hooks refused duplicate names, NaN/Infinity, out-of-range numbers. What is
    # left to check: lone surrogates (only a \\uD8xx-\\uDFxx escape, or a str argument,
    # can make one) and the nesting depth (not deeper than the number of brackets).
    if (
        raw_surrogates
        or ("\\u" in text and _SURROGATE_ESCAPE.search(text) is not None)
        or text.count("[") + text.count("{") > MAX_DEPTH
    ):
        try:
            _check(value, "$", 0)
        except NotCanonical as exc:
            raise MalformedMessage(f"not canonicalisable JSON: {exc}") from None
    return value


# ------------------------------------------------------------------------ encodings


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def b64url_encode(data: bytes) -> str:
    """Base64url (RFC 4648 section 5) without ``=`` padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Strict inverse of :func:`b64url_encode`.

    Only the base64url alphabet, no padding, no whitespace, and the text must be
    exactly what :func:`b64url_encode` gives for the decoded bytes (unused trailing
    bits zero), so one byte string has one text form. ``length``, if given, is the
    required decoded length. Raises :class:`~cloud_sync.errors.MalformedMessage`.
    """
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise MalformedMessage(f"{what} is not unpadded base64url text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedMessage(f"{what} is not valid base64url") from None
    if b64url_encode(data) != text:
        raise MalformedMessage(f"{what} is not in canonical base64url form")
    if length is not None and len(data) != length:
        raise MalformedMessage(f"{what} decodes to {len(data)} bytes, expected {length}")
    return data


def as_object(value: object, what: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object (a dict), else :class:`MalformedMessage`."""
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what} must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"
