"""cloud_sync.keys: Ed25519 key generation, key files, public key text, key ids."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from cloud_sync.errors import KeyFileError, KeyFileExists, MalformedMessage, SyncError
from cloud_sync.keys import (
    Ed25519PrivateKey,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_from_seed,
    public_key_from_text,
    public_key_pem,
    public_key_raw,
    public_key_text,
    save_private_key,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")

# RFC 8032 section 7.1, TEST 1
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rfc8032_test_vector() -> None:
    key = private_key_from_seed(RFC_SECRET)
    assert public_key_raw(key) == RFC_PUBLIC
    assert key.sign(b"") == RFC_SIG_EMPTY
    with pytest.raises(ValueError):
        private_key_from_seed(b"short")


def test_public_key_text_and_key_id() -> None:
    key = private_key_from_seed(RFC_SECRET)
    text = public_key_text(key)
    assert text == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" and len(text) == 43
    assert public_key_text(key.public_key()) == text
    assert key_id(key) == hashlib.sha256(RFC_PUBLIC).hexdigest()[:16] == "21fe31dfa154a261"
    assert public_key_raw(public_key_from_text(f"  {text}\n")) == RFC_PUBLIC
    for bad in ("", text[:-1], text + "A", text + "=", "!" * 43):
        with pytest.raises(MalformedMessage):
            public_key_from_text(bad)


def test_generated_keys_differ() -> None:
    a, b = generate_private_key(), generate_private_key()
    assert isinstance(a, Ed25519PrivateKey)
    assert public_key_raw(a) != public_key_raw(b)


@posix_only
def test_save_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "cab.key"
    old = os.umask(0)
    try:
        save_private_key(key, path)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(path)
    assert public_key_raw(loaded) == public_key_raw(key)
    assert [p.name for p in tmp_path.iterdir()] == ["cab.key"]  # no temporary files left


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "cab.key"
    first = generate_private_key()
    save_private_key(first, path)
    before = path.read_bytes()
    with pytest.raises(KeyFileExists, match="refusing to overwrite") as exc:
        save_private_key(generate_private_key(), path)
    assert isinstance(exc.value, KeyFileError) and isinstance(exc.value, SyncError)
    assert path.read_bytes() == before
    # a dangling symlink is not followed either
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyFileExists):
        save_private_key(first, link)
    assert not (tmp_path / "nowhere").exists()


@posix_only
def test_save_force_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "cab.key"
    save_private_key(generate_private_key(), path)
    path.chmod(0o644)
    second = generate_private_key()
    save_private_key(second, path, force=True)
    assert mode(path) == 0o600
    assert public_key_raw(load_private_key(path)) == public_key_raw(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cab.key"]
    with pytest.raises(KeyFileError, match="directory"):
        save_private_key(second, tmp_path, force=True)


def test_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write"):
        save_private_key(generate_private_key(), tmp_path / "no" / "cab.key")


@posix_only
def test_load_refuses_open_permissions(tmp_path: Path) -> None:
    path = tmp_path / "cab.key"
    key = generate_private_key()
    save_private_key(key, path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(path)
    assert public_key_raw(load_private_key(path, check_mode=False)) == public_key_raw(key)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such"):
        load_private_key(tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(junk)
    with pytest.raises(KeyFileError):
        load_public_key(junk)
    with pytest.raises(KeyFileError, match="directory"):
        load_private_key(tmp_path)


def test_public_key_files(tmp_path: Path) -> None:
    key = generate_private_key()
    text_file = tmp_path / "cab.pub"
    text_file.write_text(public_key_text(key) + "\n")
    pem_file = tmp_path / "cab.pem.pub"
    pem_file.write_bytes(public_key_pem(key))
    for f in (text_file, pem_file):
        assert public_key_raw(load_public_key(f)) == public_key_raw(key)
    private = tmp_path / "cab.key"
    save_private_key(key, private)
    with pytest.raises(KeyFileError, match="private key"):
        load_public_key(private)
