"""The worked example of ``docs/protocol.md``, computed (``python -m cloud_sync.example``).

Every value is deterministic: the keys are the secret keys of RFC 8032 section 7.1
tests 1 (the cabinet) and 2 (the backend), Ed25519 signatures are deterministic,
and the times, nonce and bodies are fixed. ``tests/test_sync_records.py`` checks
that the document still shows exactly what this module computes.
"""

from __future__ import annotations

import json
from typing import Any, Final

from cloud_sync.canonical import canonical_bytes, sha256_hex
from cloud_sync.keys import key_id, private_key_from_seed, public_key_text
from cloud_sync.records import ZERO_HASH, record_hash, seal, seal_ack, seal_command, signing_bytes

__all__ = ["BACKEND_SEED_HEX", "CABINET_SEED_HEX", "worked_example"]

#: RFC 8032 section 7.1, TEST 1 secret key: the example cabinet's key.
CABINET_SEED_HEX: Final = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
#: RFC 8032 section 7.1, TEST 2 secret key: the example backend's key.
BACKEND_SEED_HEX: Final = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"

CABINET: Final = "cab-demo-01"

#: The sale of docs/bills.md, members deliberately not in canonical order.
SALE_BODY: Final[dict[str, Any]] = {
    "session_id": "01JD7V3K9Q8X2M4N6P0R5S7T9V",
    "resident": "r-17",
    "role": "resident",
    "unlocked_at": 12.35,
    "opened_at": 13.1,
    "closed_at": 19.6,
    "billed_at": 20.31,
    "lines": [
        {
            "lane": 1,
            "sku": "tomato-500",
            "qty": 2,
            "weight_g": 1001.9,
            "unit_price_fen": 690,
            "amount_fen": 1380,
        }
    ],
    "total_fen": 1380,
    "flags": [],
    "evidence": [{"lane": 1, "before_g": 1502.6, "after_g": 500.7, "delta_g": -1001.9}],
}

#: An event payload as ``edge.store.CabinetStore.record_event`` writes it.
EVENT_BODY: Final[dict[str, Any]] = {
    "cabinet_id": CABINET,
    "event_id": 7,
    "t": 160.25,
    "at": "2026-11-28T10:18:10.250Z",
    "type": "door_open_too_long",
    "severity": "alarm",
    "session_id": "01JD7V3K9Q8X2M4N6P0R5S7T9V",
    "data": {"open_s": 120.5, "note": "门未关好"},
}


def worked_example() -> dict[str, Any]:
    """Every value the document shows, by name."""
    cab_key = private_key_from_seed(bytes.fromhex(CABINET_SEED_HEX))
    backend_key = private_key_from_seed(bytes.fromhex(BACKEND_SEED_HEX))
    r1 = seal(CABINET, 1, "sale", "2026-11-28T10:15:50.412Z", ZERO_HASH, SALE_BODY, cab_key)
    h1 = record_hash(r1)
    r2 = seal(CABINET, 2, "event", "2026-11-28T10:18:10.251Z", h1, EVENT_BODY, cab_key)
    h2 = record_hash(r2)
    cmd = seal_command(
        CABINET,
        "unlock",
        {"resident": "r-17", "role": "resident", "window_s": 15},
        "q8Yk2mN4pR7sT1vW3xZ5bA",
        "2026-11-28T10:15:45.000Z",
        backend_key,
    )
    ack = seal_ack(CABINET, 2, h2, backend_key)
    return {
        "cabinet_public_key": public_key_text(cab_key),
        "cabinet_key_id": key_id(cab_key),
        "backend_public_key": public_key_text(backend_key),
        "backend_key_id": key_id(backend_key),
        "record1_signing_text": signing_bytes(r1).decode("utf-8"),
        "record1_signing_sha256": sha256_hex(signing_bytes(r1)),
        "record1_sig": r1["sig"],
        "record1": canonical_bytes(r1).decode("utf-8"),
        "record1_hash": h1,
        "record2_signing_text": signing_bytes(r2).decode("utf-8"),
        "record2_sig": r2["sig"],
        "record2": canonical_bytes(r2).decode("utf-8"),
        "record2_hash": h2,
        "command_signing_text": signing_bytes(cmd).decode("utf-8"),
        "command": canonical_bytes(cmd).decode("utf-8"),
        "ack": canonical_bytes(ack).decode("utf-8"),
    }


def main() -> None:
    """Print the example's values, one ``name: value`` per line."""
    for name, value in worked_example().items():
        print(f"{name}: {value}")
    print(json.dumps({"sale_body_input": SALE_BODY}, ensure_ascii=False))


if __name__ == "__main__":
    main()
