#!/usr/bin/env python3
"""Where a training step's GPU time goes, from an Nsight Compute CSV.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv \
        --log-file prof.csv ringtrain train CONFIG ...
    tools/ncu_summary.py prof.csv [--steps N] [--json OUT.json] [--top K]

Groups the kernels by name (cuBLASLt's nvjet/cutlass/gemm kernels into one
"GEMM (cuBLASLt)" row), and prints per group: the share of all kernel time,
the time per step (total / --steps), the launches per step, and the largest
grid seen. Under ncu kernels run one at a time with replay, so the shares
say where the time goes and the sums are not step times (tools/gpu_check.sh
--profile; docs/gpu.md has one such table from an H200).
"""
import argparse
import collections
import csv
import json
import sys


NS_PER_UNIT = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}


def is_gemm(name):
    n = name.lower()
    return n.startswith("nvjet") or "cutlass" in n or "gemm" in n or "xmma" in n


def group_of(name):
    if is_gemm(name):
        return "GEMM (cuBLASLt)"
    base = name.split("(")[0].strip()
    if base.startswith("void "):
        base = base[len("void "):]
    return base


def read(path):
    """[(kernel name, grid, ns)], from the ncu CSV (its header row names the columns)."""
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own ==PROF== lines are not CSV
    if not lines:
        raise ValueError(f"{path}: no CSV rows (did ncu profile any kernel?)")
    rows = list(csv.DictReader(lines))
    need = {"Kernel Name", "Grid Size", "Metric Name", "Metric Value", "Metric Unit"}
    missing = need - set(rows[0].keys())
    if missing:
        raise ValueError(f"{path}: not an ncu --csv file (missing columns {sorted(missing)})")
    out = []
    for r in rows:
        if r["Metric Name"] != "gpu__time_duration.sum":
            continue
        unit = r["Metric Unit"].strip()
        if unit not in NS_PER_UNIT:
            raise ValueError(f"{path}: unknown time unit {unit!r}")
        ns = float(r["Metric Value"].replace(",", "")) * NS_PER_UNIT[unit]
        out.append((r["Kernel Name"], r["Grid Size"], ns))
    if not out:
        raise ValueError(f"{path}: no gpu__time_duration.sum values (profile with --metrics gpu__time_duration.sum)")
    return out


def summarize(kernels, steps):
    total = sum(ns for _, _, ns in kernels)
    groups = collections.OrderedDict()
    for name, grid, ns in kernels:
        g = groups.setdefault(group_of(name), {"ns": 0.0, "launches": 0, "grid": grid, "blocks": 0})
        g["ns"] += ns
        g["launches"] += 1
        dims = [int(x) for x in grid.strip("()").split(",") if x.strip()]
        blocks = 1
        for d in dims:
            blocks *= d
        if blocks > g["blocks"]:
            g["blocks"], g["grid"] = blocks, grid
    out = []
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["ns"]):
        out.append({
            "kernel": name,
            "share": g["ns"] / total,
            "ms_per_step": g["ns"] / 1e6 / steps,
            "launches_per_step": g["launches"] / steps,
            "largest_grid": g["grid"],
        })
    return {"kernels": len(kernels), "steps": steps, "ms_per_step": total / 1e6 / steps, "groups": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=1, help="training steps the profile covers (default 1)")
    ap.add_argument("--json", help="also write the summary as JSON here")
    ap.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    a = ap.parse_args()
    if a.steps < 1:
        ap.error("--steps must be >= 1")
    try:
        s = summarize(read(a.csv), a.steps)
    except (OSError, ValueError) as e:
        print(f"ncu_summary: {e}", file=sys.stderr)
        return 2
    print(f"{s['kernels']} kernel launches over {s['steps']} step(s): "
          f"{s['ms_per_step']:.2f} ms of kernel time per step (kernels one at a time, under ncu)")
    print(f"{'share':>6} {'ms/step':>8} {'launches':>8}  {'largest grid':<16} kernel")
    for g in s["groups"][:a.top]:
        print(f"{100 * g['share']:5.1f}% {g['ms_per_step']:8.3f} {g['launches_per_step']:8.1f}  "
              f"{g['largest_grid']:<16} {g['kernel']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(s, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
