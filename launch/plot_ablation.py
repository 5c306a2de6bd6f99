#!/usr/bin/env python3
"""Plots of a `ringtrain ablate` sweep, from its summary.json, written beside it:
  ppl_vs_length.png    perplexity vs evaluation length, one line per variant (log axes)
  passkey.png          passkey accuracy heat-maps (length x needle depth), side by side
  loss_curves.png      training loss vs step, one line per run (variant x seed)
  cost_vs_quality.png  training FLOPs (cumulative over init_from parents; eval-only
                       variants at their model's cost) vs perplexity at the longest length,
                       and peak memory vs the same
A plot is skipped when no variant has its data. `ringtrain ablate` runs this
after every finished variant.

usage: /usr/bin/python3 launch/plot_ablation.py RUNS/SWEEP/summary.json
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def metric(v, key):
    m = v["metrics"].get(key)
    return None if m is None or m["mean"] is None else m["mean"]


def color(i, n):
    """Distinct colours for up to 20 lines (the default cycle repeats after 10)."""
    return plt.cm.tab10(i % 10) if n <= 10 else plt.cm.tab20(i % 20)


def ppl_lengths(summary):
    return sorted({int(c[4:]) for c in summary["columns"] if c.startswith("ppl@")})


def plot_ppl(summary, out):
    lens = ppl_lengths(summary)
    if not lens:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    n = len(summary["variants"])
    for i, v in enumerate(summary["variants"]):
        xs = [t for t in lens if metric(v, f"ppl@{t}") is not None]
        if not xs:
            continue
        ys = [metric(v, f"ppl@{t}") for t in xs]
        ax.plot(xs, ys, marker="o", label=v["name"], color=color(i, n),
                linestyle="--" if v["kind"] == "eval-only" else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lens, [str(t) for t in lens])
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{summary['sweep']}: perplexity vs length (dashed: eval-only)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_passkey(summary, out):
    vs = [v for v in summary["variants"] if v.get("passkey")]
    if not vs:
        return False
    n = len(vs)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 0.9 + 0.35 * max(3, len(vs[0]["passkey"]["seq_lens"])) * rows + 0.6),
                             squeeze=False, constrained_layout=True)
    im = None
    for k, v in enumerate(vs):
        ax = axes[k // cols][k % cols]
        pk = v["passkey"]
        acc, lens, depths = pk["accuracy"], pk["seq_lens"], pk["depths"]
        im = ax.imshow(acc, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_yticks(range(len(lens)), [str(t) for t in lens], fontsize=7)
        for i, row in enumerate(acc):
            for j, a in enumerate(row):
                ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if 0.25 < a < 0.85 else "white")
        ax.set_title(v["name"], fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("length", fontsize=8)
        ax.set_xlabel("depth", fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{summary['sweep']}: passkey accuracy", fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_loss(summary, out):
    fig, ax = plt.subplots(figsize=(9, 4.5))
    insts = [i for v in summary["variants"] for i in v["instances"] if i.get("loss_curve")]
    any_curve = bool(insts)
    for k, inst in enumerate(insts):
        curve = inst["loss_curve"]
        ax.plot([c[0] for c in curve], [c[1] for c in curve], label=inst["name"], lw=1.2,
                color=color(k, len(insts)))
    if not any_curve:
        plt.close(fig)
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{summary['sweep']}: training loss", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def plot_cost(summary, out):
    lens = ppl_lengths(summary)
    if not lens:
        return False
    longest = lens[-1]
    by_name = {v["name"]: v for v in summary["variants"]}

    def cost(v, key):
        # eval-only variants cost what their model cost
        while v is not None and v["kind"] == "eval-only":
            v = by_name.get(v["parent"])
        if v is None:
            return None
        if key == "flops":
            fl = [i["cumulative_flops"] for i in v["instances"] if i.get("cumulative_flops")]
            return sum(fl) / len(fl) if fl else None
        return metric(v, key)

    pts = []
    for v in summary["variants"]:
        q = metric(v, f"ppl@{longest}")
        if q is not None:
            pts.append((v, q, cost(v, "flops"), cost(v, "peak_mem_mb")))
    pts_f = [p for p in pts if p[2]]
    if not pts_f:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, idx, label in ((axes[0], 2, "training FLOPs (cumulative over init_from)"),
                           (axes[1], 3, "peak memory of training (MiB)")):
        for v, q, *_ in pts:
            c = (v, q, *_)[idx]
            if not c:
                continue
            ax.scatter([c], [q], marker="^" if v["kind"] == "eval-only" else "o")
            ax.annotate(v["name"], (c, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(f"perplexity at {longest} tokens")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_xscale("log")
    fig.suptitle(f"{summary['sweep']}: cost vs quality (triangles: eval-only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    with open(path) as f:
        summary = json.load(f)
    d = os.path.dirname(path) or "."
    for name, fn in (("ppl_vs_length.png", plot_ppl), ("passkey.png", plot_passkey),
                     ("loss_curves.png", plot_loss), ("cost_vs_quality.png", plot_cost)):
        if fn(summary, os.path.join(d, name)):
            print("wrote", os.path.join(d, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
