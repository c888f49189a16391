#!/usr/bin/env python3
"""Benchmark a /metrics scrape and a poll's publishing at 3, 100 and 1,000 accounts.

A scrape and a poll's publishing share PollMetrics' one lock (a scrape sees each poll whole),
so a poll finishing during a scrape waits at most for one rendering: the `exposition` column.
The reference, measured in the same run on the same registry, is prometheus_client's bare
`generate_latest(registry)`, the least a scrape can cost; the ratio is what judging health
and taking the lock add. `observe` is one poll's publishing with no scrape under way.

    .venv/bin/python scripts/bench_metrics.py            # 20 scrapes and 2,000 polls per size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.exposition import generate_latest  # noqa: E402

from recorder.metrics import PollMetrics  # noqa: E402


class Outcome:
    used_weight, changed_count = 15, 3


def median_ms(call, runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--polls", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'accounts':>8} {'generate_latest ms':>19} {'exposition ms':>14} {'ratio':>6} {'observe us':>11}")
    for accounts in (3, 100, 1000):
        metrics = PollMetrics()
        labels = [f"account-{i}" for i in range(accounts)]
        for label in labels:
            metrics.watch(label, 60.0)
            metrics.observe(label, Outcome(), None, 0.02)
        # Interleaved, so machine load hits both alike.
        bare, scrape = [], []
        for _ in range(args.scrapes):
            bare.append(median_ms(lambda: generate_latest(metrics.registry), 1))
            scrape.append(median_ms(metrics.exposition, 1))
        polls = iter(labels * (args.polls // accounts + 1))
        observe_us = median_ms(lambda: metrics.observe(next(polls), Outcome(), None, 0.02), args.polls) * 1000
        bare_ms, scrape_ms = statistics.median(bare), statistics.median(scrape)
        print(f"{accounts:>8} {bare_ms:>19.2f} {scrape_ms:>14.2f} {scrape_ms / bare_ms:>6.2f} {observe_us:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
