#!/usr/bin/env python3
"""Per-kernel times of the last decode step in an `ncu --csv --metrics gpu__time_duration.sum`
report (tests/gpu/check.sh --profile): the kernels from the last embedding gather on, in launch
order, then summed by kernel. ncu runs each kernel alone with cold caches, so small kernels read
longer than inside a step; the products read about as in a step."""
import collections
import csv
import sys


def main(path):
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]
    rows = []
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"].split("(")[0].replace("void ", "")
        us = float(r["Metric Value"].replace(",", "")) / 1e3  # ns
        rows.append((name, r["Grid Size"], r["Block Size"], us))
    starts = [i for i, r in enumerate(rows) if r[0].endswith("embed_kernel")]
    if not starts:
        print(f"ncu_step.py: no embed_kernel in {path} ({len(rows)} kernels)")
        return 1
    step = rows[starts[-1]:]
    print(f"| kernel (last decode step, {len(step)} launches) | grid | block | us |")
    print("|---|---|---|---|")
    for name, grid, block, us in step:
        print(f"| {name} | {grid} | {block} | {us:.2f} |")
    total = collections.defaultdict(float)
    count = collections.Counter()
    for name, _, _, us in step:
        total[name] += us
        count[name] += 1
    print()
    print("| kernel | launches | us | share |")
    print("|---|---|---|---|")
    whole = sum(total.values())
    for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {count[name]} | {us:.1f} | {100 * us / whole:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
