"""The run report: one self-contained HTML file (plots embedded) plus report.json.

It is built only from what the run directory holds (stage records, manifest,
metrics), so ``sslpipe report RUN_DIR`` can rebuild it at any time.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from curation.ingest import iter_samples  # noqa: E402
import storage  # noqa: E402


def _png_uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


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
    return _png_uri(fig)


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
    return _png_uri(fig)


def _read_manifest(location: str | Path, columns: list[str]) -> "pa.Table":
    """Columns of a manifest that is local or in object storage."""
    if not storage.is_uri(location):
        return pq.read_table(location, columns=columns)
    fs, path = storage.filesystem_for(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


LABEL_FREE_METRICS = (("rankme", "RankMe (higher: more directions used)"),
                      ("alignment", "alignment (lower: views closer)"),
                      ("uniformity", "uniformity (lower: more spread)"),
                      ("feature_std", "per-dimension std (0 = collapsed)"))


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
    return _png_uri(fig)


def label_free_section(free: dict[str, Any], labelled: bool) -> str:
    """The final encoder's label-free metrics next to its random initialisation."""
    p, r = free["pretrained"], free["random_init"]
    rows = [[title.split(" (")[0], f"{r[key]:.4f}", f"{p[key]:.4f}"] for key, title in LABEL_FREE_METRICS if key in p]
    head = "<h2>Label-free metrics</h2>" if labelled else "<h2>What was learned (no labelled evaluation set)</h2>"
    better = p["rankme"] > r["rankme"]
    verdict = (f"<p class='{'verdict' if better else 'verdict warn'}'>RankMe (effective rank of the embeddings) "
               f"<b>{p['rankme']:.1f}</b> after pretraining, {r['rankme']:.1f} at random initialisation; feature std "
               f"{p['feature_std']:.3f}.</p>")
    note = "" if labelled else ("<p>This run has no labelled evaluation set (eval.bank_source / eval.query_source), "
                                "so no accuracy is reported; these are the figures that stand in for it.</p>")
    return (head + verdict + note + f"<p>{html.escape(free['protocol'])}.</p>"
            + _table(rows, ["metric", "random init", "pretrained"]))


def _skipped_sentence(ev: dict[str, Any]) -> str:
    skipped = ev.get("unlabelled_skipped") or {}
    if not any(skipped.values()):
        return ""
    return (f"; {skipped.get('bank', 0)} bank and {skipped.get('queries', 0)} query images without a label were "
            f"left out")


def removed_grid(manifest_path: str | Path, per_reason: int = 8) -> str | None:
    """A grid of removed samples, one row per reason, next to the sample each duplicates."""
    table = _read_manifest(manifest_path, ["key", "source", "reason", "duplicate_of", "kept"])
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
    return _png_uri(fig)


def planted_truth(manifest_path: str | Path) -> dict[str, dict[str, int]] | None:
    """For demo pools: per planted kind, how many were removed and why."""
    table = _read_manifest(manifest_path, ["meta", "kept", "reason"])
    stats: dict[str, Counter] = defaultdict(Counter)
    for meta, kept, reason in zip(*(table.column(c).to_pylist() for c in ("meta", "kept", "reason"))):
        try:
            kind = json.loads(meta).get("planted") if meta else None
        except ValueError:
            kind = None
        if kind is None:
            continue
        stats[kind]["total"] += 1
        stats[kind]["removed" if not kept else "kept"] += 1
        if not kept:
            stats[kind][reason.split(":")[0]] += 1
    return {k: dict(v) for k, v in sorted(stats.items())} or None


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
    return _png_uri(fig)


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
    return _png_uri(fig)


def per_class_plot(per_class: list[float]) -> str:
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(range(len(per_class)), per_class, color="#4c72b0")
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class accuracy (linear probe)", fontsize=9)
    return _png_uri(fig)


def evaluation_sections(ev: dict[str, Any]) -> list[str]:
    """HTML for the extended evaluation figures that are present, each with its protocol."""
    out = []
    if "knn_protocols" in ev:
        out.append("<h3>kNN under the published protocols</h3>"
                   + _table([[name, f"{acc:.4f}"] for name, acc in ev["knn_protocols"].items()], ["protocol", "top-1"]))
    if "linear_probe" in ev:
        lp = ev["linear_probe"]
        out.append(f"<h3>Linear probe</h3><p>top-1 <b>{lp['top1']:.4f}</b> ({html.escape(lp['protocol'])}).</p>")
    if "few_shot" in ev:
        out.append("<h3>Few-shot (linear probe on a labelled fraction, mean ± std over draws)</h3>" + _table(
            [[k, f"{v['mean']:.4f} ± {v['std']:.4f}", len(v["tries"]), v.get("n_labelled", "")] for k, v in ev["few_shot"].items()],
            ["labels", "top-1", "draws", "labelled images"]))
    if "per_class" in ev:
        pc = ev["per_class"]
        out.append("<h3>Per-class and head / medium / tail accuracy</h3><p>Classes split in thirds by their number of "
                   "images in the evaluation bank.</p>" + _table(
                       [[g, f"{pc[g]:.4f}" if pc[g] == pc[g] else "n/a", pc["n_classes"].get(g, 0)] for g in ("head", "medium", "tail")],
                       ["group", "mean per-class accuracy", "classes"])
                   + f"<img src='{per_class_plot(pc['per_class'])}'>")
    if "robustness" in ev:
        rob = ev["robustness"]
        out.append(f"<h3>Robustness</h3><p>{html.escape(rob['protocol'])}; clean {rob['clean']:.4f}, mean drop "
                   f"{rob.get('mean_drop', 0):.4f}.</p><img src='{robustness_plot(rob)}'>")
    if ev.get("embedding_plot") and storage.is_file(ev["embedding_plot"]):
        data = base64.b64encode(storage.read_bytes(ev["embedding_plot"])).decode()
        out.append(f"<h3>Embedding of the held-out set</h3><img src='data:image/png;base64,{data}'>")
    return out


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
    return _png_uri(fig)


def pruning_rounds_table(history: list[dict[str, Any]]) -> str | None:
    rows = []
    for h in history:
        if "prune_round_seconds" not in h:
            continue
        fmt = lambda k: f"{h[k]:.3f}" if k in h else "-"  # noqa: E731
        rows.append([h["epoch"], h["active_samples"], fmt("prune_cluster_entropy_after"),
                     fmt("prune_class_entropy_before"), fmt("prune_class_entropy_after"),
                     f"{h.get('prune_embed_seconds', 0.0):.1f}", f"{h['prune_round_seconds']:.1f}",
                     f"{h.get('epoch_seconds', 0.0):.1f}"])
    if not rows:
        return None
    return _table(rows, ["epoch", "kept", "cluster entropy (kept)", "class entropy (pool)", "class entropy (kept)",
                         "re-embed s", "round s", "training s"])


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}.verdict{font-size:1.1em;padding:.6em;background:#eef5ee;border-left:4px solid #4a4}
.warn{background:#fbeee6;border-left-color:#d60}img{max-width:100%}pre{background:#f7f7f7;padding:.5em;overflow:auto}"""


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/report.json`` from the run's stage records.

    ``run_dir`` may be an object-store uri: the report is built from what is stored there, written
    there, and also written to a local copy (``storage.scratch_dir``) to open in a browser; the
    returned path is always that local, openable file.
    """
    remote = storage.is_uri(run_dir)
    run_dir = str(run_dir) if remote else Path(run_dir)
    stages_dir = storage.join(run_dir, "stages")
    if not storage.is_dir(stages_dir):
        from curation.errors import InputError

        raise InputError(f"{run_dir} is not an sslpipe run directory (no stages/); run `sslpipe run CONFIG` first")
    stages = {name[: -len(".json")]: storage.read_json(storage.join(stages_dir, name))
              for name in storage.list_dir(stages_dir) if name.endswith(".json")}
    figures: dict[str, Any] = {"run_dir": str(run_dir), "stages": sorted(stages)}
    shown = run_dir if remote else run_dir.resolve()
    parts = [f"<h1>sslpipe run report</h1><p>Run directory: <code>{html.escape(str(shown))}</code></p>"]

    ev = stages.get("evaluate")
    if ev and "knn_top1" in ev:
        knn = ev["knn_top1"]
        figures["knn"] = ev
        gain, vs_raw = ev["gain_over_random_init"], ev["gain_over_raw_pixels"]
        cls = "verdict" if gain > 0 else "verdict warn"
        raw_sentence = (
            f"{abs(vs_raw) * 100:.1f} points {'above' if vs_raw >= 0 else 'below'} kNN on raw pixels"
        )
        parts.append(
            f"<h2>What was learned</h2><p class='{cls}'>The pretrained encoder reaches kNN top-1 "
            f"<b>{knn['pretrained']:.3f}</b>, {gain * 100:+.1f} points over the same encoder at random "
            f"initialisation ({knn['random_init']:.3f}) and {raw_sentence} ({knn['raw_pixels']:.3f}).</p>"
            f"<p>Protocol: {html.escape(ev['protocol'])}; bank = {ev['bank_size']} labelled images of the evaluation "
            f"set's bank, queries = {ev['test_size']} held-out labelled images (both apart from the training pool"
            f"{_skipped_sentence(ev)}).</p>"
            + _table([[k, f"{v:.4f}"] for k, v in knn.items()], ["encoder", "kNN top-1"])
            + f"<img src='{knn_plot(knn, ev['protocol'])}'>"
        )
    if ev and "label_free" in ev:
        figures["label_free"] = ev["label_free"]
        parts.append(label_free_section(ev["label_free"], labelled="knn_top1" in ev))
    if ev:
        parts.extend(evaluation_sections(ev))
    pt = stages.get("pretrain")
    if pt:
        figures["pretrain"] = {k: pt[k] for k in ("seconds", "history") if k in pt}
        hist = pt.get("history", [])
        last = hist[-1] if hist else {}
        parts.append(
            f"<h2>Pretraining</h2><p>{html.escape(pt.get('description', ''))}</p>"
            f"<p>{len(hist)} epochs, {last.get('step', 0)} optimizer steps in {pt['seconds']:.0f} s; "
            f"last epoch {last.get('images_per_s', 0):.0f} images/s.</p>"
            + (f"<img src='{loss_plot(hist)}'>" if hist else "")
        )
        curves = label_free_plot(hist)
        if curves:
            parts.append("<h3>Label-free metrics per epoch</h3><p>On a fixed random sample of the curated pool "
                         "(pipelines/monitor.py): RankMe, effective rank of the embeddings (Garrido et al. 2023, "
                         "higher is better); alignment of two augmented views and uniformity on the sphere (Wang and "
                         "Isola 2020, lower is better for both); per-dimension std of the normalised features "
                         "(about 1 = spread, 0 = collapsed).</p>" + f"<img src='{curves}'>")
        rounds_plot = pruning_rounds_plot(hist)
        if rounds_plot:
            parts.append("<h3>Dynamic pruning rounds</h3><p>Each round re-embeds the pool with the current backbone, "
                         "re-clusters and keeps a balanced subset until the next round.</p>"
                         + (pruning_rounds_table(hist) or "") + f"<img src='{rounds_plot}'>")
    cu = stages.get("curate")
    if cu:
        figures["curation"] = cu["summary"]
        summary = cu["summary"]
        labels = summary.get("labels")
        label_sentence = (f" Labels: {labels['input']['labelled']} labelled and {labels['input']['unlabelled']} "
                          f"unlabelled in the input, {labels['kept']['labelled']} and {labels['kept']['unlabelled']} "
                          f"kept (pool labels are reported, never used to curate or train)." if labels else "")
        parts.append(
            f"<h2>Curation</h2><p>{summary['input']} input samples: <b>{summary['kept']} kept</b>, "
            f"{summary['removed']} removed (kept + removed = input; every key once in "
            f"<code>manifest.parquet</code>).{label_sentence}</p>"
            + _table([[r, n] for r, n in summary["reasons"].items()], ["reason", "samples"])
        )
        plot = before_after_plot(summary)
        if plot:
            parts.append(f"<img src='{plot}'>")
        manifest = cu["manifest"]
        found = storage.is_file(manifest)
        truth = planted_truth(manifest) if found else None
        if truth:
            figures["planted_truth"] = truth
            parts.append(
                "<h3>Planted truth (demo pool)</h3><p>What curation did with each kind of planted sample. "
                "Originals should be kept; a removed original means its copy sorted first and was kept instead.</p>"
                + _table(
                    [[k, v.get("total", 0), v.get("kept", 0), v.get("removed", 0),
                      ", ".join(f"{r} {n}" for r, n in v.items() if r not in ("total", "kept", "removed"))]
                     for k, v in truth.items()],
                    ["planted kind", "total", "kept", "removed", "removed as"],
                )
            )
        grid = removed_grid(manifest) if found else None
        if grid:
            parts.append(f"<img src='{grid}'>")
    timings = {name: round(float(s.get("seconds", 0.0)), 1) for name, s in stages.items() if "seconds" in s}
    figures["stage_seconds"] = timings
    parts.append("<h2>Stages</h2>" + _table([[k, v] for k, v in timings.items()], ["stage", "seconds"]))
    cfg_path = storage.join(run_dir, "config.yaml")
    if storage.is_file(cfg_path):
        parts.append(f"<h2>Resolved config</h2><pre>{html.escape(storage.read_text(cfg_path))}</pre>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>sslpipe report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    storage.write_json(storage.join(run_dir, "report.json"), figures)
    storage.write_text(storage.join(run_dir, "report.html"), page)
    local = storage.join(storage.scratch_dir(run_dir), "report.html")
    if remote:
        storage.write_text(local, page)
    return Path(local)
