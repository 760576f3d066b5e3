"""Grade what a cabinet billed against the truth of a scenario (``expect``).

A bill is *exact* when every session has the expected lines (same SKU and
quantity; weighed lines within ``weighed_tolerance``) and exactly the expected
flags. It is an *overcharge* when any line asks for more than the truth: a
higher count, an SKU that was not taken, or a weighed amount above the price of
the weight that really left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.model import Lane


@dataclass(frozen=True, slots=True)
class WeighedTolerance:
    """How close a weighed line must be to the truth to count as exact."""

    abs_g: float = 5.0
    rel: float = 0.015

    def ok(self, billed_g: float, true_g: float) -> bool:
        return abs(billed_g - true_g) <= max(self.abs_g, self.rel * true_g)


@dataclass(slots=True)
class Grade:
    exact: bool = True
    overcharged: bool = False
    overcharge_fen: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.exact = False
        self.problems.append(problem)


def grade(
    billed: Sequence[Mapping[str, Any]],
    expected: Sequence[Mapping[str, Any]],
    lanes: Sequence[Lane],
    tolerance: WeighedTolerance | None = None,
) -> Grade:
    """Compare billed sessions (docs/bills.md) with ``expect.sessions`` (docs/scenario.md)."""
    tol = tolerance or WeighedTolerance()
    by_sku = {ln.sku: ln for ln in lanes}
    g = Grade()
    billed = [s for s in billed if s.get("role") != "operator"]
    expected = [s for s in expected if s.get("role", "resident") != "operator"]
    if len(billed) != len(expected):
        g.fail(f"{len(billed)} sessions billed, {len(expected)} expected")
    for i, (b, e) in enumerate(zip(billed, expected, strict=False)):
        want = {str(ln["sku"]): ln for ln in e.get("lines", [])}
        got: dict[str, Mapping[str, Any]] = {}
        for ln in b["lines"]:
            got[str(ln["sku"])] = ln
        for sku, ln in got.items():
            lane = by_sku.get(sku)
            truth = want.get(sku)
            if truth is None:
                g.overcharged = True
                g.overcharge_fen += int(ln["amount_fen"])
                g.fail(f"session {i}: billed {sku} that was not taken")
                continue
            if lane is not None and lane.mode == "weighed":
                true_g = float(truth.get("weight_g", 0.0))
                true_fen = math.floor((lane.price_fen_per_kg or 0) * true_g / 1000.0)
                if int(ln["amount_fen"]) > true_fen:
                    g.overcharged = True
                    g.overcharge_fen += int(ln["amount_fen"]) - true_fen
                    g.fail(f"session {i}: {sku} {ln['weight_g']} g billed, {true_g:.1f} g taken")
                elif not tol.ok(float(ln["weight_g"]), true_g):
                    g.fail(f"session {i}: {sku} {ln['weight_g']} g billed, {true_g:.1f} g taken")
            else:
                if int(ln["qty"]) > int(truth["qty"]):
                    g.overcharged = True
                    g.overcharge_fen += (int(ln["qty"]) - int(truth["qty"])) * int(
                        ln["unit_price_fen"]
                    )
                if int(ln["qty"]) != int(truth["qty"]):
                    g.fail(f"session {i}: {sku} x{ln['qty']} billed, x{truth['qty']} taken")
        for sku in want.keys() - got.keys():
            g.fail(f"session {i}: {sku} x{want[sku]['qty']} taken, not billed")
        if sorted(b["flags"]) != sorted(e.get("flags", [])):
            g.fail(
                f"session {i}: flags {sorted(b['flags'])}, expected {sorted(e.get('flags', []))}"
            )
    return g
