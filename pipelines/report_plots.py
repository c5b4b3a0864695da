"""The run report's figures, each a PNG ``data:`` URI (pipelines/html_plots.py) built from what the run
directory holds: training curves, kNN bars, label-free metrics, curation before/after and removed samples,
robustness, per-class accuracy and dynamic pruning rounds."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

import storage  # noqa: E402
from curation.ingest import iter_samples  # noqa: E402
from pipelines.html_plots import png_uri  # noqa: E402

#: the monitor's label-free metrics and how to read each, in the order the report shows them
LABEL_FREE_METRICS = (("rankme", "RankMe (higher: more directions used)"),
                      ("alignment", "alignment (lower: views closer)"),
                      ("uniformity", "uniformity (lower: more spread)"),
                      ("feature_std", "per-dimension std (0 = collapsed)"))


def read_manifest(location: str | Path, columns: list[str]) -> "pa.Table":
    """Columns of a manifest that is local or in object storage."""
    if not storage.is_uri(location):
        return pq.read_table(location, columns=columns)
    fs, path = storage.filesystem_for(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


def loss_plot(history: list[dict[str, Any]]) -> str:
    """Training loss per epoch, with the online kNN monitor on a second axis when present."""
    fig, ax = plt.subplots(figsize=(6, 3))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, color="#4c72b0", label="SSL loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("SSL loss (train)", color="#4c72b0")
    ax.grid(alpha=0.3)
    knn = [(h["epoch"], h["knn_top1"]) for h in history if h.get("knn_top1") == h.get("knn_top1") and "knn_top1" in h]
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn), marker="s", ms=3, color="#c44e52")
        ax2.set_ylabel("online kNN top-1 (held out)", color="#c44e52")
    ax.set_title("Pretraining: loss and online kNN")
    return png_uri(fig)


def knn_plot(knn: dict[str, float], protocol: str) -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    order = ["raw_pixels", "random_init", "pretrained"]
    names = [n for n in order if n in knn] + [n for n in knn if n not in order]
    values = [knn[n] for n in names]
    colours = {"raw_pixels": "#999999", "random_init": "#d08c60", "pretrained": "#4c72b0"}
    bars = ax.bar(names, values, color=[colours.get(n, "#55a868") for n in names])
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom")
    ax.set_ylim(min(values) - 0.1, 1.0)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(protocol, fontsize=9)
    return png_uri(fig)


def label_free_plot(history: list[dict[str, Any]]) -> str | None:
    """One panel per label-free metric over the epochs the monitor scored."""
    rows = [h for h in history if h.get("rankme") == h.get("rankme") and "rankme" in h]
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(LABEL_FREE_METRICS), figsize=(4 * len(LABEL_FREE_METRICS), 2.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], LABEL_FREE_METRICS):
        points = [(h["epoch"], h[key]) for h in rows if key in h]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, color="#4c72b0")
        ax.set(xlabel="epoch", title=title)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_uri(fig)


def removed_grid(manifest_path: str | Path, per_reason: int = 8) -> str | None:
    """A grid of removed samples, one row per reason, next to the sample each duplicates."""
    table = read_manifest(manifest_path, ["key", "source", "reason", "duplicate_of", "kept"])
    rows = [r for r in table.to_pylist() if not r["kept"] and r["reason"] != "duplicate_key"]
    by_reason: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if len(by_reason[r["reason"]]) < per_reason:
            by_reason[r["reason"]].append(r)
    if not by_reason:
        return None
    wanted = {r["key"] for rs in by_reason.values() for r in rs} | {r["duplicate_of"] for rs in by_reason.values() for r in rs}
    sources = {r["source"] for r in table.to_pylist() if r["key"] in wanted}
    found: dict[str, bytes] = {}
    for src in sorted(sources):
        for row in iter_samples(src):
            if row["key"] in wanted and row["image"]:
                found[row["key"]] = row["image"]

    def pixels(key: str) -> np.ndarray | None:
        try:
            im = Image.open(io.BytesIO(found[key]))
            if im.size[0] * im.size[1] > 4_000_000:  # a decompression bomb is shown as text, never decoded
                return None
            return np.asarray(im.convert("L" if im.mode in ("L", "1", "I", "I;16") else "RGB"))
        except Exception:  # noqa: BLE001 - corrupt images are exactly what this grid shows
            return None

    reasons = sorted(by_reason)
    fig, axes = plt.subplots(len(reasons), per_reason, figsize=(per_reason * 1.1, len(reasons) * 1.3), squeeze=False)
    for r_i, reason in enumerate(reasons):
        for c in range(per_reason):
            ax = axes[r_i][c]
            ax.axis("off")
            if c >= len(by_reason[reason]):
                continue
            row = by_reason[reason][c]
            img = pixels(row["key"])
            if img is not None and row["duplicate_of"] in found:
                orig = pixels(row["duplicate_of"])
                if orig is not None and orig.shape == img.shape:
                    gap = np.full((img.shape[0], 2) + img.shape[2:], 255, np.uint8)
                    img = np.concatenate([img, gap, orig], axis=1)
            if img is None:
                ax.text(0.5, 0.5, "undecodable", ha="center", va="center", fontsize=6)
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)  # fixed range: a blank image must not look black
            if c == 0:
                ax.set_title(reason, fontsize=7, loc="left")
    fig.suptitle("Removed samples (duplicates shown next to the kept image they duplicate)", fontsize=8)
    return png_uri(fig)


def before_after_plot(summary: dict[str, Any]) -> str | None:
    """Class histogram (and sorted cluster sizes when balancing ran) before and after curation."""
    hist, bal = summary.get("class_histogram"), summary.get("balance")
    panels = [p for p in (hist, bal) if p]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3), squeeze=False)
    ax = axes[0][0]
    if hist:
        idx = np.arange(len(hist["before"]))
        ax.bar(idx - 0.2, hist["before"], 0.4, label="input", color="#999999")
        ax.bar(idx + 0.2, hist["after"], 0.4, label="kept", color="#4c72b0")
        ax.set_xlabel("class")
        ax.set_ylabel("images")
        ax.set_title("Class histogram before / after", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[0][-1]
    if bal:
        before = sorted(bal["cluster_sizes_before"], reverse=True)
        after = sorted(bal["cluster_sizes_after"], reverse=True)
        ax.plot(before, label="before", color="#999999")
        ax.plot(after, label="after balancing", color="#4c72b0")
        ax.set_yscale("log")
        ax.set_xlabel("finest-level cluster (sorted by size)")
        ax.set_ylabel("images")
        ax.set_title("Cluster sizes before / after", fontsize=9)
        ax.legend(fontsize=7)
    return png_uri(fig)


def robustness_plot(rob: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    for kind, info in rob["per_kind"].items():
        drops = info.get("by_severity") or {}  # severity -> clean - accuracy (keys are strings after JSON)
        sev = sorted(drops, key=lambda k: int(k))
        ax.plot([int(k) for k in sev], [rob["clean"] - drops[k] for k in sev], marker="o", ms=3, label=kind)
    ax.axhline(rob["clean"], color="#999", ls="--", label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("kNN top-1")
    ax.legend(fontsize=7)
    ax.set_title("Robustness to corruptions", fontsize=9)
    ax.grid(alpha=0.3)
    return png_uri(fig)


def per_class_plot(per_class: list[float]) -> str:
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(range(len(per_class)), per_class, color="#4c72b0")
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class accuracy (linear probe)", fontsize=9)
    return png_uri(fig)


def pruning_rounds_plot(history: list[dict[str, Any]]) -> str | None:
    """Dynamic pruning over training: the active pool, the balance it reached, and where the time went
    (re-embedding + re-clustering vs training), so a user sees at a glance whether pruning paid off."""
    rounds = [h for h in history if "prune_round_seconds" in h]
    if not rounds:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 3))
    epochs = [h["epoch"] for h in history]
    axes[0].step(epochs, [h["active_samples"] for h in history], where="mid", color="#4c72b0")
    axes[0].plot([h["epoch"] for h in rounds], [h["active_samples"] for h in rounds], "o", color="#c44e52",
                 label="pruning round")
    axes[0].set(xlabel="epoch", ylabel="samples trained on", title="Active pool", ylim=(0, None))
    axes[0].legend(fontsize=8)
    r_epochs = [h["epoch"] for h in rounds]
    for key, label, style in (("prune_cluster_entropy_after", "cluster entropy, kept", "o-"),
                              ("prune_cluster_entropy_before", "cluster entropy, pool", "o--"),
                              ("prune_class_entropy_after", "class entropy, kept", "s-"),
                              ("prune_class_entropy_before", "class entropy, pool", "s--")):
        values = [h.get(key) for h in rounds]
        if all(v is not None for v in values):
            axes[1].plot(r_epochs, values, style, ms=4, label=label)
    axes[1].set(xlabel="epoch", ylabel="normalised entropy", title="Balance at each round", ylim=(0, 1.02))
    axes[1].legend(fontsize=8)
    embed = [h.get("prune_embed_seconds", 0.0) if "prune_round_seconds" in h else 0.0 for h in history]
    cluster = [h["prune_round_seconds"] - h.get("prune_embed_seconds", 0.0) if "prune_round_seconds" in h else 0.0
               for h in history]
    train = [h.get("epoch_seconds", 0.0) for h in history]
    axes[2].bar(epochs, train, color="#4c72b0", label="training")
    axes[2].bar(epochs, embed, bottom=train, color="#dd8452", label="re-embedding")
    axes[2].bar(epochs, cluster, bottom=[a + b for a, b in zip(train, embed)], color="#55a868",
                label="clustering + sampling")
    axes[2].set(xlabel="epoch", ylabel="seconds", title="Time per epoch")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return png_uri(fig)
