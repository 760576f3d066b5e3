"""Feed signed cabinet records into a test backend through the real ingest path.

``CabinetFeed(env)`` keeps one Ed25519 key and chain per cabinet, enrols the key, and
``sale(...)`` / ``event(...)`` seal the next record and store it through
``cloud_sync.ingest_db.IngestDB`` with the backend's ``RecordApplier`` as its hook:
exactly what a record arriving over MQTT goes through after verification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend_env import Env

from backend.sales import RecordApplier
from cloud_sync.canonical import canonical_bytes, sha256_hex
from cloud_sync.ingest_db import GoodRecord, IngestDB, IngestStats
from cloud_sync.keys import Ed25519PrivateKey, generate_private_key, public_key_text
from cloud_sync.records import ZERO_HASH, format_at, seal


def line(
    lane: int, sku: str, qty: int | None, weight_g: float, unit_price_fen: int
) -> dict[str, Any]:
    amount = (
        (qty or 0) * unit_price_fen if qty is not None else round(weight_g * unit_price_fen / 1000)
    )
    return {
        "lane": lane,
        "sku": sku,
        "qty": qty,
        "weight_g": weight_g,
        "unit_price_fen": unit_price_fen,
        "amount_fen": amount,
    }


@dataclass
class _Chain:
    key: Ed25519PrivateKey
    seq: int = 0
    head: str = ZERO_HASH


@dataclass
class CabinetFeed:
    env: Env
    chains: dict[str, _Chain] = field(default_factory=dict)

    def __post_init__(self) -> None:
        be = self.env.backend
        self.applier = RecordApplier(be.clock, be.bus)
        self.db = IngestDB(
            be.db.engine,
            now=be.clock.now,
            on_stored=self.applier,
            on_commit=self.applier.committed,
        )
        self.stats = IngestStats()

    def _chain(self, cabinet_id: str) -> _Chain:
        chain = self.chains.get(cabinet_id)
        if chain is None:
            chain = _Chain(generate_private_key())
            self.db.enrol(cabinet_id, public_key_text(chain.key.public_key()))
            self.chains[cabinet_id] = chain
        return chain

    def record(self, cabinet_id: str, kind: str, body: dict[str, Any]) -> int:
        chain = self._chain(cabinet_id)
        seq = chain.seq + 1
        rec = seal(
            cabinet_id,
            seq,
            kind,
            self.env.clock.now(),
            chain.head,
            body,
            chain.key,  # type: ignore[arg-type]
        )
        data = canonical_bytes(rec)
        good = GoodRecord(
            cabinet_id, seq, kind, rec["at"], rec["prev"], sha256_hex(data), data.decode("utf-8")
        )
        with self.db.transaction() as tx:
            self.db.apply(tx, cabinet_id, [good], self.stats)
        chain.seq, chain.head = seq, good.hash
        return seq

    def sale(
        self,
        cabinet_id: str,
        username: str,
        lines: list[dict[str, Any]],
        *,
        flags: list[str] | None = None,
        role: str = "resident",
        session_id: str | None = None,
    ) -> int:
        users = self.env.users
        resident = f"r-{users[username]}" if role == "resident" else username
        total = sum(int(ln["amount_fen"]) for ln in lines)
        now = format_at(self.env.clock.now())
        body = {
            "session_id": session_id or f"S{len(self.chains)}{self._chain(cabinet_id).seq + 1:06d}",
            "resident": resident,
            "role": role,
            "unlocked_at": 1.0,
            "opened_at": 2.0,
            "closed_at": 9.0,
            "billed_at": 10.0,
            "lines": lines,
            "total_fen": total,
            "flags": flags or [],
            "evidence": [
                {
                    "lane": ln["lane"],
                    "before_g": 2000.0,
                    "after_g": 2000.0 - ln["weight_g"],
                    "delta_g": -ln["weight_g"],
                }
                for ln in lines
            ],
            "at": now,
        }
        body.pop("at")
        return self.record(cabinet_id, "sale", body)

    def event(
        self,
        cabinet_id: str,
        type_: str,
        severity: str = "warning",
        data: dict[str, Any] | None = None,
    ) -> int:
        body = {
            "cabinet_id": cabinet_id,
            "event_id": f"E{self._chain(cabinet_id).seq + 1}",
            "t": 1.0,
            "at": format_at(self.env.clock.now()),
            "type": type_,
            "severity": severity,
            "session_id": None,
            "data": data or {},
        }
        return self.record(cabinet_id, "event", body)
