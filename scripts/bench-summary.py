#!/usr/bin/env python3
"""Summarises the runs of scripts/bench.sh: for each case, the median of its runs.

Usage: bench-summary.py DIR CASE...  (reads DIR/CASE.run*.json, written by `kvstore --json bench`)
       bench-summary.py --run FILE      (one line for one run)

Prints a Markdown table: the median throughput with the slowest and fastest run beside it, and
the median of the runs' p50, p99 and p99.9. One run on a shared VM can be a third off; the
median of several is what docs/benchmarks.md reports. When scripts/bench.sh recorded what the
host took during a run (CASE.runN.host.json: steal time and I/O wait, in % of all CPU ticks),
each run's line and the table show it: a run with steal time measured the neighbours too.
"""
import glob
import json
import statistics
import sys


def ms(us):
    return f"{us / 1000:.2f} ms"


def codes(runs):
    """The error codes the runs met, summed: `503 rebalancing 5, 404 not_found 1`."""
    sums = {}
    for r in runs:
        # Reports from before `codes` existed have none: counted by status only.
        for status, named in r["total"]["errors"].get("codes", {}).items():
            for code, n in named.items():
                sums[(status, code)] = sums.get((status, code), 0) + n
    return ", ".join(f"{s} {c} {n}" for (s, c), n in sorted(sums.items()))


def with_codes(errors, runs):
    named = codes(runs)
    return f"{errors} ({named})" if named else f"{errors}"


def host(path):
    """The run's steal and I/O wait shares, if scripts/bench.sh recorded them."""
    try:
        return json.load(open(path.removesuffix(".json") + ".host.json"))
    except (OSError, ValueError):
        return None


def one_run(path):
    r = json.load(open(path))
    lat = r["total"]["latency_us"]
    h = host(path)
    took = f"  steal {h['steal_pct']:.1f} %  iowait {h['iowait_pct']:.1f} %" if h else ""
    return (
        f"{r['throughput']:9,.0f} req/s  p50 {ms(lat['p50'])}  p99 {ms(lat['p99'])}  "
        f"errors {with_codes(r['total']['errors']['total'], [r])}{took}"
    )


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        print(one_run(sys.argv[2]))
        return
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, cases = sys.argv[1], sys.argv[2:]
    print(
        "| Case | Runs | Throughput (median) | Slowest – fastest run | p50 | p99 | p99.9 | Errors "
        "| Steal (runs) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        paths = sorted(p for p in glob.glob(f"{out}/{case}.run*.json") if not p.endswith(".host.json"))
        runs = [json.load(open(f)) for f in paths]
        if not runs:
            print(f"| {case} | 0 | no runs found | | | | | | |")
            continue
        hosts = [host(p) for p in paths]
        steal = ", ".join(f"{h['steal_pct']:.0f} %" for h in hosts if h) or "-"
        rate = [r["throughput"] for r in runs]
        lat = [r["total"]["latency_us"] for r in runs]
        errors = sum(r["total"]["errors"]["total"] for r in runs)
        med = lambda k: statistics.median(l[k] for l in lat)  # noqa: E731
        print(
            f"| {case} | {len(runs)} | {statistics.median(rate):,.0f} /s "
            f"| {min(rate):,.0f} – {max(rate):,.0f} /s | {ms(med('p50'))} | {ms(med('p99'))} "
            f"| {ms(med('p99.9'))} | {with_codes(errors, runs)} | {steal} |"
        )


if __name__ == "__main__":
    main()
