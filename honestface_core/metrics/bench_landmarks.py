"""Benchmark of :func:`landmark_distances`: ``python -m honestface_core.metrics.bench_landmarks [--pairs N]``.

Times L2-LD + ALD + ALD-e + ALD-m for N random landmark pairs (default 100,000, WFLW 98 points) on the CPU and
prints the best of ``--repeats`` runs: wall-clock ``seconds`` and the process's ``cpu_seconds`` (the latter is
less affected by other processes on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from honestface_core.metrics.landmark_distance import landmark_distances
from honestface_core.metrics.schemes import get_scheme


def run(pairs: int = 100_000, scheme: str = "wflw98", repeats: int = 3, seed: int = 0) -> dict:
    """Return ``{"pairs", "scheme", "points", "seconds", "cpu_seconds", "pairs_per_second"}`` (best of ``repeats``)."""
    n = get_scheme(scheme).num_points
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 512, (pairs, n, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    best = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        landmark_distances(pred, gt, scheme)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return {"pairs": pairs, "scheme": scheme, "points": n, "seconds": round(best, 4), "cpu_seconds": round(cpu, 4),
            "pairs_per_second": round(pairs / best)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000, help="number of landmark pairs (default 100000)")
    parser.add_argument("--scheme", default="wflw98", help="wflw98 | ins106 | ins68 | dlib68")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.pairs, args.scheme, args.repeats)))


if __name__ == "__main__":
    main()
