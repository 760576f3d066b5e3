"""docs/protocol.md: its worked example verifies, by hand and with cloud_sync, and is current."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_sync.canonical import canonical_bytes
from cloud_sync.example import SALE_BODY, worked_example
from cloud_sync.keys import key_id, private_key_from_seed, public_key_from_text, public_key_text
from cloud_sync.records import (
    ZERO_HASH,
    record_hash,
    verify_ack,
    verify_chain,
    verify_command,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BLOCK = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def doc() -> dict[str, str]:
    blocks = dict(_BLOCK.findall(DOC.read_text(encoding="utf-8")))
    assert len(blocks) >= 15, sorted(blocks)
    return blocks


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_example_verifies_by_hand(doc: dict[str, str]) -> None:
    """Only the document, hashlib and an Ed25519 verifier: what an outsider would do."""
    pub = Ed25519PublicKey.from_public_bytes(b64url(doc["cabinet-public-key"]))
    assert (
        hashlib.sha256(b64url(doc["cabinet-public-key"])).hexdigest()[:16]
        == (doc["cabinet-key-id"])
    )
    prev = "0" * 64
    for n in (1, 2):
        text = doc[f"record{n}"]
        record = json.loads(text)
        signing = doc[f"record{n}-signing-text"].encode("utf-8")
        # the signed bytes are the record without "sig" (same canonical text minus that member)
        sig_member = f',"sig":"{record["sig"]}"'
        assert text.replace(sig_member, "").encode("utf-8") == signing
        pub.verify(b64url(record["sig"]), signing)  # raises if it does not verify
        assert hashlib.sha256(text.encode("utf-8")).hexdigest() == doc[f"record{n}-hash"]
        assert record["prev"] == prev and record["seq"] == n
        prev = doc[f"record{n}-hash"]
    assert json.loads(doc["record1"])["sig"] == doc["record1-sig"]
    assert "门未关好" in doc["record2"]

    backend = Ed25519PublicKey.from_public_bytes(b64url(doc["backend-public-key"]))
    command = json.loads(doc["command"])
    backend.verify(b64url(command["sig"]), doc["command-signing-text"].encode("utf-8"))
    ack = json.loads(doc["ack"])
    unsigned_ack = doc["ack"].replace(f'"sig":"{ack["sig"]}",', "")
    backend.verify(b64url(ack["sig"]), unsigned_ack.encode("utf-8"))
    assert ack["head"] == doc["record2-hash"] and ack["upto"] == 2


def test_example_verifies_with_cloud_sync(doc: dict[str, str]) -> None:
    pub = public_key_from_text(doc["cabinet-public-key"])
    records = [json.loads(doc["record1"]), json.loads(doc["record2"])]
    report = verify_chain(records, pub)
    assert report.ok and report.head_hash == doc["record2-hash"] and report.segments == 1
    assert records[0]["prev"] == ZERO_HASH
    for n, rec in enumerate(records, start=1):
        assert canonical_bytes(rec).decode() == doc[f"record{n}"]
        assert record_hash(rec) == doc[f"record{n}-hash"]
    # the input body of 6.1 is the body of record 1
    assert json.loads(doc["sale-body"]) == records[0]["body"] == SALE_BODY

    backend = public_key_from_text(doc["backend-public-key"])
    cmd = json.loads(doc["command"])
    issued = datetime(2026, 11, 28, 10, 15, 30, tzinfo=UTC)
    verify_command(cmd, backend, issued, set(), cabinet_id="cab-demo-01")
    assert verify_ack(json.loads(doc["ack"]), backend, cabinet_id="cab-demo-01") == 2


def test_doc_shows_what_the_code_computes(doc: dict[str, str]) -> None:
    """The pasted values are current: regenerating the example gives the same text."""
    ex = worked_example()
    key = private_key_from_seed(bytes.fromhex(doc["cabinet-seed"]))
    assert public_key_text(key) == doc["cabinet-public-key"] == ex["cabinet_public_key"]
    assert key_id(key) == doc["cabinet-key-id"] == ex["cabinet_key_id"]
    assert doc["backend-public-key"] == ex["backend_public_key"]
    assert doc["backend-key-id"] == ex["backend_key_id"]
    for name in ("record1", "record2", "command", "ack"):
        assert doc[name] == ex[name], name
    for n in (1, 2):
        assert doc[f"record{n}-signing-text"] == ex[f"record{n}_signing_text"]
        assert doc[f"record{n}-hash"] == ex[f"record{n}_hash"]
    assert doc["record1-sig"] == ex["record1_sig"]
    assert doc["command-signing-text"] == ex["command_signing_text"]
    text = DOC.read_text(encoding="utf-8")
    size = len(ex["record1_signing_text"].encode("utf-8"))
    assert f"({size} bytes, all ASCII; their SHA-256 is\n`{ex['record1_signing_sha256']}`" in text
    assert "e9 97 a8 e6 9c aa e5 85 b3 e5 a5 bd" in text
    assert "门未关好".encode().hex(" ") == "e9 97 a8 e6 9c aa e5 85 b3 e5 a5 bd"


def test_doc_rfc8785_example_matches(doc: dict[str, str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(
        r"the value\n\n```json\n(.*?)\n```\n\ncanonicalises to\n\n```text\n(.*?)\n```",
        text,
        re.DOTALL,
    )
    assert m is not None
    assert canonical_bytes(json.loads(m.group(1))) == m.group(2).encode("utf-8")
