"""Ed25519 keys (through ``cryptography``): generate, save, load, name.

* A **private key file** is PKCS #8 PEM, unencrypted, mode ``0600``. Saving never
  overwrites an existing file unless asked to (and then replaces it atomically);
  loading refuses a file that group or others can read (like ``ssh``), unless
  ``check_mode=False`` (for secrets mounted by an orchestrator).
* A **public key** travels as text: the 32 raw bytes (RFC 8032) in unpadded
  base64url, 43 characters. A public key file may hold that text or a PEM
  ``PUBLIC KEY`` (SubjectPublicKeyInfo) block.
* A **key id** is the first 16 hex digits of SHA-256 over the 32 raw public key
  bytes: short enough to print, long enough not to collide in a fleet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cloud_sync.canonical import b64url_decode, b64url_encode
from cloud_sync.errors import KeyFileError, KeyFileExists, MalformedMessage

__all__ = [
    "KEY_FILE_MODE",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_from_seed",
    "private_key_pem",
    "public_key_from_text",
    "public_key_pem",
    "public_key_raw",
    "public_key_text",
    "save_private_key",
]

#: Mode of a private key file.
KEY_FILE_MODE: Final = 0o600
#: Largest key file read (a PEM Ed25519 key is ~120 bytes).
_MAX_KEY_FILE: Final = 16 * 1024


def generate_private_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """The private key whose 32-byte RFC 8032 secret is ``seed`` (tests, examples)."""
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public key (of a private key: its public half)."""
    return _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as unpadded base64url of its 32 raw bytes (43 characters)."""
    return b64url_encode(public_key_raw(key))


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the 32 raw public key bytes."""
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Parse :func:`public_key_text` output (surrounding whitespace ignored).

    Raises :class:`~cloud_sync.errors.MalformedMessage`.
    """
    raw = b64url_decode(text.strip(), length=32, what="public key")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # pragma: no cover - every 32 bytes parse in current OpenSSL
        raise MalformedMessage(f"public key: {exc}") from None


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS #8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM."""
    return _public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---------------------------------------------------------------------- key files


def save_private_key(key: Ed25519PrivateKey, path: Path | str, *, force: bool = False) -> None:
    """Write ``key`` to ``path`` as PEM with mode 0600.

    Without ``force`` an existing path (file, directory or symlink, even dangling)
    raises :class:`~cloud_sync.errors.KeyFileExists` and is left untouched; the file
    is created with ``O_EXCL`` so two writers cannot both succeed. With ``force``
    the new key is written to a temporary file in the same directory and renamed
    over the old one, so readers see the old key or the new one, never a mix.
    Other failures raise :class:`~cloud_sync.errors.KeyFileError`.
    """
    path = Path(path)
    data = private_key_pem(key)
    if not force:
        try:
            _write_new(path, data)
        except FileExistsError:
            raise KeyFileExists(
                f"{path} already exists; refusing to overwrite a key (use --force to replace it)"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot write key file: {exc.strerror or exc}") from None
        _fsync_dir(path.parent)
        return
    if path.is_dir():
        raise KeyFileError(f"{path} is a directory")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _write_new(tmp, data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise KeyFileError(f"{path}: cannot write key file: {exc.strerror or exc}") from None
    _fsync_dir(path.parent)


def _write_new(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, KEY_FILE_MODE)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, KEY_FILE_MODE)  # exactly 0600 whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_key_file(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{path} is not a regular file")
            data = fh.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path} is a directory") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path} is too large to be a key file")
    return data, st


def load_private_key(path: Path | str, *, check_mode: bool = True) -> Ed25519PrivateKey:
    """Read a private key written by :func:`save_private_key` (PKCS #8 PEM).

    With ``check_mode`` (the default) a file that group or others may access is
    refused. Raises :class:`~cloud_sync.errors.KeyFileError`.
    """
    path = Path(path)
    data, st = _read_key_file(path)
    if check_mode and os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: a private key must not be "
            f"accessible to group or others (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: encrypted private keys are not supported") from None
    except ValueError:
        raise KeyFileError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read a public key file: base64url text (:func:`public_key_text`) or PEM.

    Raises :class:`~cloud_sync.errors.KeyFileError`.
    """
    path = Path(path)
    data, _ = _read_key_file(path)
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" in data:
            raise KeyFileError(f"{path} holds a private key; give the public key")
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyFileError(f"{path} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return key
    try:
        return public_key_from_text(data.decode("ascii"))
    except (UnicodeDecodeError, MalformedMessage) as exc:
        detail = str(exc) if isinstance(exc, MalformedMessage) else "not ASCII text"
        raise KeyFileError(f"{path}: {detail}") from None
