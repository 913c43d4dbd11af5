"""Figures of a benchmark sweep report (`sweeps.sweep`). matplotlib (the `experiments` extra) is imported on use."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedup(report: dict, path: str) -> None:
    """speedup.png: measured (solid: token-wise, dotted: block) and predicted (dashed) speedup vs K, per batch."""
    plt = _pyplot()
    rows = report["rows"]
    batches = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], batches):
        for t in sorted({r["temperature"] for r in rows}):
            cell = [r for r in rows if r["batch_size"] == b and r["temperature"] == t]
            tokenwise = sorted((r for r in cell if r["verify"] == "tokenwise"), key=lambda r: r["K"])
            block_rows = sorted((r for r in cell if r["verify"] == "block"), key=lambda r: r["K"])
            color = None
            if tokenwise:
                ks = [r["K"] for r in tokenwise]
                color = ax.plot(ks, [r["speedup"] for r in tokenwise], "o-", label=f"T={t} token-wise")[0].get_color()
                ax.plot(ks, [r["predicted_speedup"] for r in tokenwise], "--", color=color, label=f"T={t} predicted")
            if block_rows:
                ax.plot(
                    [r["K"] for r in block_rows],
                    [r["speedup"] for r in block_rows],
                    "x:",
                    color=color,
                    label=f"T={t} block",
                )
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"batch {b}")
        ax.set_xlabel("K (draft tokens per round)")
    axes[0][0].set_ylabel("speedup over autoregressive")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"jaxspec speculative sampling on the shipped pair ({report['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acceptance(report: dict, path: str) -> None:
    """acceptance.png: accepted drafts per round, token-wise vs block, per temperature (all batches pooled)."""
    plt = _pyplot()
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted({r["temperature"] for r in rows}):
        color = None
        for v, style in (("tokenwise", "o-"), ("block", "x:")):
            sel = [r for r in rows if r["temperature"] == t and r["verify"] == v]
            ks = sorted({r["K"] for r in sel})
            if not ks:
                continue
            mean = [np.mean([r["accepted_per_round"] for r in sel if r["K"] == k]) for k in ks]
            color = ax.plot(ks, mean, style, color=color, label=f"T={t} {v}")[0].get_color()
    ax.set_xlabel("K (draft tokens per round)")
    ax.set_ylabel("accepted draft tokens per round")
    ax.legend(fontsize=7)
    ax.set_title("token-wise vs block verification, shipped pair")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
