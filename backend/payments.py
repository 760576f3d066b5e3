"""Payment providers: how money gets into a wallet.

A provider turns a top-up request into a confirmed payment with the provider's own
reference; the wallet entry's ``ref`` is ``topup:{provider}:{reference}``, so a
confirmation delivered twice credits once. ``SimulatedProvider`` (the demo's) confirms
at once; a real provider (WeChat Pay, Alipay) would confirm through its callback.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Protocol

from backend.errors import InputError

__all__ = ["Payment", "PaymentProvider", "SimulatedProvider"]

MAX_TOPUP_FEN = 100_000  # 1,000 CNY per top-up


@dataclass(frozen=True, slots=True)
class Payment:
    provider: str
    reference: str
    amount_fen: int
    confirmed: bool


class PaymentProvider(Protocol):
    name: str

    def charge(self, user_id: int, amount_fen: int) -> Payment:
        """Take ``amount_fen`` from the resident's payment method."""
        ...


class SimulatedProvider:
    """Always succeeds, immediately; references are unique per process and random."""

    name = "sim"

    def __init__(self) -> None:
        self._n = itertools.count(1)
        self._run = secrets.token_hex(4)

    def charge(self, user_id: int, amount_fen: int) -> Payment:
        if amount_fen <= 0 or amount_fen > MAX_TOPUP_FEN:
            raise InputError("amount_fen", f"must be from 1 to {MAX_TOPUP_FEN}")
        return Payment(self.name, f"{self._run}-{next(self._n):06d}", amount_fen, True)
