#!/usr/bin/env python3
"""How honest is the uncertainty the cabinet claims for weighed lanes?

    python scripts/bench_sigma.py            # 100 scenarios per tier

Billing charges a weighed lane for ``loss - 3 sigma``: a claimed sigma smaller
than the real error would overcharge. For every weighed line of a session with
no flags, this compares the measured loss with the simulator's truth and prints
the error (g) and z = error / claimed sigma per tier. z above +3 is an overcharge.
"""

from __future__ import annotations

import argparse
import multiprocessing
from typing import Any

import numpy as np

import edge.cabinet as cabinet_module
from edge.billing import Bill, BillingPolicy, LaneReading
from firmware_mock.corpus import generate_scenario
from firmware_mock.runner import run_stream
from firmware_mock.simulator import SimulatedCabinet

BASES = {"standard": 1000, "hard": 2000, "slow": 3000}


def one(args: tuple[str, int]) -> list[tuple[float, float]]:
    tier, seed = args
    readings_per_bill: list[dict[int, tuple[float, float]]] = []
    original = cabinet_module.bill_session

    def recording(readings: list[LaneReading], stock: Any, policy: BillingPolicy) -> Bill:
        readings_per_bill.append(
            {r.lane.lane: (r.after_g - r.before_g, r.sigma_g) for r in readings}
        )
        return original(readings, stock, policy)

    cabinet_module.bill_session = recording  # type: ignore[assignment]
    scenario = generate_scenario(seed, tier)  # type: ignore[arg-type]
    sim = SimulatedCabinet(scenario)
    run_stream(sim.spec, sim.stream(), seed=seed)
    expected = [e for e in (scenario.expect or {})["sessions"] if "unlock_unused" not in e["flags"]]
    lanes = {ln.sku: ln for ln in scenario.lanes}
    out = []
    for readings, e in zip(readings_per_bill, expected, strict=False):
        if e["flags"]:
            continue
        for line in e["lines"]:
            lane = lanes[line["sku"]]
            if lane.mode == "weighed" and lane.lane in readings:
                delta, sigma = readings[lane.lane]
                out.append((-delta - float(line["weight_g"]), sigma))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-tier", type=int, default=100, help="scenarios per tier")
    args = ap.parse_args()
    for tier, base in BASES.items():
        with multiprocessing.Pool(2) as pool:
            rows = [
                x
                for r in pool.map(one, [(tier, base + k) for k in range(args.per_tier)])
                for x in r
            ]
        err = np.array([e for e, _ in rows])
        sig = np.array([s for _, s in rows])
        z = err / sig
        print(
            f"{tier:<9} {len(z)} weighed lines: error sd {err.std():.2f} g, claimed sigma "
            f"mean {sig.mean():.2f} g, z sd {z.std():.2f}, z max {z.max():+.2f}, "
            f"z min {z.min():+.2f}"
        )


if __name__ == "__main__":
    main()
