"""Canonical JSON (RFC 8785, "JCS") and the small encodings the protocol uses.

:func:`canonical_bytes` is the only way a ``cloud_sync`` message becomes bytes for
hashing or signing. It walks the value first so that anything without an RFC 8785
form is refused with :class:`~cloud_sync.errors.NotCanonical` naming the exact
place (``$.body.lines[0].weight_g: NaN is not allowed``), then serialises with the
``rfc8785`` package: object members sorted by the UTF-16 code units of their
names, no insignificant whitespace, numbers as ECMAScript prints IEEE 754 doubles
(``4.5``, ``1e+30``, ``0.002``, ``1e-7``, ``-0`` as ``0``), strings as UTF-8 with only
the mandatory escapes.

:func:`parse_json` is the matching strict reader for text that came off the wire:
duplicate member names, ``NaN``/``Infinity`` and lone surrogates are refused, and
integers beyond ±(2^53 − 1) become doubles (what any RFC 8785 producer meant by
them), so ``canonical_bytes(parse_json(canonical_bytes(x))) == canonical_bytes(x)``
for every canonicalisable ``x``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
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
    _check(obj, "$", 0)
    try:
        return rfc8785.dumps(obj)  # type: ignore[arg-type]
    except rfc8785.CanonicalizationError as exc:  # pragma: no cover - _check is stricter
        raise NotCanonical("$", str(exc)) from exc


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
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MalformedMessage(f"duplicate member name {key!r}")
        out[key] = value
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
    else:
        text = data
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise MalformedMessage("JSON nested too deeply") from None
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
