#!/usr/bin/env python3
"""Plots of a `ringtrain eval` JSON (SPEC §9), written beside it:
  BASE_passkey.png           passkey accuracy heat-map, length x needle depth
  BASE_loss_by_position.png  mean next-token NLL by position bucket
  BASE_ppl.png               perplexity by evaluation length
where BASE is the JSON path without `.json`. A plot is skipped when its
section is absent.

usage: python3 launch/plot_eval.py EVAL.json

matplotlib because it is well kept, packaged in Debian (python3-matplotlib,
so setup.sh installs it like every other dependency) and draws an annotated
heat-map with a colour bar in a few lines; the Agg backend needs no display.
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_passkey(pk, title, out):
    lens, depths, acc = pk["seq_lens"], pk["depths"], pk["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(depths), 1.2 + 0.6 * len(lens)))
    im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="lower")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lens)), [str(n) for n in lens])
    ax.set_xlabel("needle depth (0 = start, 1 = end)")
    ax.set_ylabel("sequence length (tokens)")
    for i, row in enumerate(acc):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center",
                    color="black" if 0.25 < a < 0.85 else "white", fontsize=9)
    trials = pk.get("trials")
    ax.set_title(f"{title}\npasskey accuracy" + (f" ({trials} trials per cell)" if trials else ""),
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_loss_by_position(lbp, title, out):
    b = lbp["bucket"]
    xs, ys = [], []
    for k, v in enumerate(lbp["mean_nll"]):
        if v is not None:
            xs.append(k * b + b / 2)
            ys.append(v)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o", markersize=3)
    ax.set_xlabel(f"position (bucket of {b} tokens)")
    ax.set_ylabel("mean next-token NLL")
    ax.set_title(f"{title}\nloss by position, seq_len {lbp['seq_len']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_ppl(ppl, title, out):
    xs = [p["seq_len"] for p in ppl]
    ys = [p["ppl"] for p in ppl]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o")
    if len(xs) > 1 and min(xs) > 0:
        ax.set_xscale("log", base=2)
    if min(ys) > 0 and max(ys) / min(ys) > 100:  # e.g. 1 at the training length, 1e4 beyond
        ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{title}\nperplexity by length", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    with open(path) as f:
        j = json.load(f)
    base = path[:-5] if path.endswith(".json") else path
    title = f"{os.path.basename(j.get('checkpoint') or 'random init')} (step {j.get('step', '?')})"
    written = []
    if j.get("passkey"):
        plot_passkey(j["passkey"], title, base + "_passkey.png")
        written.append(base + "_passkey.png")
    lbp = j.get("loss_by_position")
    if lbp and any(v is not None and math.isfinite(v) for v in lbp["mean_nll"]):
        plot_loss_by_position(lbp, title, base + "_loss_by_position.png")
        written.append(base + "_loss_by_position.png")
    if j.get("perplexity"):
        plot_ppl(j["perplexity"], title, base + "_ppl.png")
        written.append(base + "_ppl.png")
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
