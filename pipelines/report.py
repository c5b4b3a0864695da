"""The run report: one self-contained HTML file (plots embedded) plus report.json.

It is built only from what the run directory holds (stage records, manifest,
metrics), so ``sslpipe report RUN_DIR`` can rebuild it at any time. The figures are
drawn in pipelines/report_plots.py; the page pieces shared with the sweep report and
``sslpipe eval``'s page are in pipelines/html_plots.py.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import storage
from curation.errors import InputError
from pipelines.html_plots import CSS, html_page, html_table, png_file_uri
from pipelines.report_plots import (LABEL_FREE_METRICS, before_after_plot, knn_plot, label_free_plot, loss_plot,
                                    per_class_plot, pruning_rounds_plot, read_manifest, removed_grid, robustness_plot)

__all__ = ["CSS", "build_report", "evaluation_sections", "label_free_section", "planted_truth", "pruning_rounds_plot",
           "pruning_rounds_table"]


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
            + html_table(rows, ["metric", "random init", "pretrained"]))


def _skipped_sentence(ev: dict[str, Any]) -> str:
    skipped = ev.get("unlabelled_skipped") or {}
    if not any(skipped.values()):
        return ""
    return (f"; {skipped.get('bank', 0)} bank and {skipped.get('queries', 0)} query images without a label were "
            f"left out")


def planted_truth(manifest_path: str | Path) -> dict[str, dict[str, int]] | None:
    """For demo pools: per planted kind, how many were removed and why."""
    table = read_manifest(manifest_path, ["meta", "kept", "reason"])
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


def evaluation_sections(ev: dict[str, Any]) -> list[str]:
    """HTML for the extended evaluation figures that are present, each with its protocol."""
    out = []
    if "knn_protocols" in ev:
        out.append("<h3>kNN under the published protocols</h3>"
                   + html_table([[name, f"{acc:.4f}"] for name, acc in ev["knn_protocols"].items()], ["protocol", "top-1"]))
    if "linear_probe" in ev:
        lp = ev["linear_probe"]
        out.append(f"<h3>Linear probe</h3><p>top-1 <b>{lp['top1']:.4f}</b> ({html.escape(lp['protocol'])}).</p>")
    if "few_shot" in ev:
        out.append("<h3>Few-shot (linear probe on a labelled fraction, mean ± std over draws)</h3>" + html_table(
            [[k, f"{v['mean']:.4f} ± {v['std']:.4f}", len(v["tries"]), v.get("n_labelled", "")]
             for k, v in ev["few_shot"].items()],
            ["labels", "top-1", "draws", "labelled images"]))
    if "per_class" in ev:
        pc = ev["per_class"]
        out.append("<h3>Per-class and head / medium / tail accuracy</h3><p>Classes split in thirds by their number of "
                   "images in the evaluation bank.</p>" + html_table(
                       [[g, f"{pc[g]:.4f}" if pc[g] == pc[g] else "n/a", pc["n_classes"].get(g, 0)]
                        for g in ("head", "medium", "tail")],
                       ["group", "mean per-class accuracy", "classes"])
                   + f"<img src='{per_class_plot(pc['per_class'])}'>")
    if "robustness" in ev:
        rob = ev["robustness"]
        out.append(f"<h3>Robustness</h3><p>{html.escape(rob['protocol'])}; clean {rob['clean']:.4f}, mean drop "
                   f"{rob.get('mean_drop', 0):.4f}.</p><img src='{robustness_plot(rob)}'>")
    if ev.get("embedding_plot") and storage.is_file(ev["embedding_plot"]):
        data = png_file_uri(storage.read_bytes(ev["embedding_plot"]))
        out.append(f"<h3>Embedding of the held-out set</h3><img src='{data}'>")
    return out


def _entropy(h: dict[str, Any], key: str) -> str:
    return f"{h[key]:.3f}" if key in h else "-"


def pruning_rounds_table(history: list[dict[str, Any]]) -> str | None:
    """One row per dynamic pruning round: pool kept, balance reached, and the seconds it cost."""
    rows = []
    for h in history:
        if "prune_round_seconds" not in h:
            continue
        rows.append([h["epoch"], h["active_samples"], _entropy(h, "prune_cluster_entropy_after"),
                     _entropy(h, "prune_class_entropy_before"), _entropy(h, "prune_class_entropy_after"),
                     f"{h.get('prune_embed_seconds', 0.0):.1f}", f"{h['prune_round_seconds']:.1f}",
                     f"{h.get('epoch_seconds', 0.0):.1f}"])
    if not rows:
        return None
    return html_table(rows, ["epoch", "kept", "cluster entropy (kept)", "class entropy (pool)", "class entropy (kept)",
                         "re-embed s", "round s", "training s"])


def _knn_part(ev: dict[str, Any]) -> str:
    """The headline: kNN top-1 of the pretrained encoder against random init and raw pixels."""
    knn = ev["knn_top1"]
    gain, vs_raw = ev["gain_over_random_init"], ev["gain_over_raw_pixels"]
    cls = "verdict" if gain > 0 else "verdict warn"
    raw_sentence = f"{abs(vs_raw) * 100:.1f} points {'above' if vs_raw >= 0 else 'below'} kNN on raw pixels"
    return (
        f"<h2>What was learned</h2><p class='{cls}'>The pretrained encoder reaches kNN top-1 "
        f"<b>{knn['pretrained']:.3f}</b>, {gain * 100:+.1f} points over the same encoder at random "
        f"initialisation ({knn['random_init']:.3f}) and {raw_sentence} ({knn['raw_pixels']:.3f}).</p>"
        f"<p>Protocol: {html.escape(ev['protocol'])}; bank = {ev['bank_size']} labelled images of the evaluation "
        f"set's bank, queries = {ev['test_size']} held-out labelled images (both apart from the training pool"
        f"{_skipped_sentence(ev)}).</p>"
        + html_table([[k, f"{v:.4f}"] for k, v in knn.items()], ["encoder", "kNN top-1"])
        + f"<img src='{knn_plot(knn, ev['protocol'])}'>"
    )


def _evaluate_parts(ev: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """The evaluate stage: kNN headline (labelled runs), label-free metrics, the extended evaluation."""
    parts = []
    if "knn_top1" in ev:
        figures["knn"] = ev
        parts.append(_knn_part(ev))
    if "label_free" in ev:
        figures["label_free"] = ev["label_free"]
        parts.append(label_free_section(ev["label_free"], labelled="knn_top1" in ev))
    return parts + evaluation_sections(ev)


def _pretrain_parts(pt: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """The pretrain stage: loss and online kNN per epoch, label-free curves, dynamic pruning rounds."""
    figures["pretrain"] = {k: pt[k] for k in ("seconds", "history") if k in pt}
    hist = pt.get("history", [])
    last = hist[-1] if hist else {}
    parts = [
        f"<h2>Pretraining</h2><p>{html.escape(pt.get('description', ''))}</p>"
        f"<p>{len(hist)} epochs, {last.get('step', 0)} optimizer steps in {pt['seconds']:.0f} s; "
        f"last epoch {last.get('images_per_s', 0):.0f} images/s.</p>"
        + (f"<img src='{loss_plot(hist)}'>" if hist else "")
    ]
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
    return parts


def _planted_truth_part(truth: dict[str, dict[str, int]]) -> str:
    return ("<h3>Planted truth (demo pool)</h3><p>What curation did with each kind of planted sample. "
            "Originals should be kept; a removed original means its copy sorted first and was kept instead.</p>"
            + html_table(
                [[k, v.get("total", 0), v.get("kept", 0), v.get("removed", 0),
                  ", ".join(f"{r} {n}" for r, n in v.items() if r not in ("total", "kept", "removed"))]
                 for k, v in truth.items()],
                ["planted kind", "total", "kept", "removed", "removed as"],
            ))


def _curate_parts(cu: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    """The curate stage: kept + removed = input by reason, before/after, planted truth, removed samples."""
    figures["curation"] = cu["summary"]
    summary = cu["summary"]
    labels = summary.get("labels")
    label_sentence = (f" Labels: {labels['input']['labelled']} labelled and {labels['input']['unlabelled']} "
                      f"unlabelled in the input, {labels['kept']['labelled']} and {labels['kept']['unlabelled']} "
                      f"kept (pool labels are reported, never used to curate or train)." if labels else "")
    parts = [
        f"<h2>Curation</h2><p>{summary['input']} input samples: <b>{summary['kept']} kept</b>, "
        f"{summary['removed']} removed (kept + removed = input; every key once in "
        f"<code>manifest.parquet</code>).{label_sentence}</p>"
        + html_table([[r, n] for r, n in summary["reasons"].items()], ["reason", "samples"])
    ]
    plot = before_after_plot(summary)
    if plot:
        parts.append(f"<img src='{plot}'>")
    manifest = cu["manifest"]
    found = storage.is_file(manifest)
    truth = planted_truth(manifest) if found else None
    if truth:
        figures["planted_truth"] = truth
        parts.append(_planted_truth_part(truth))
    grid = removed_grid(manifest) if found else None
    if grid:
        parts.append(f"<img src='{grid}'>")
    return parts


def _read_stages(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    stages_dir = storage.join(run_dir, "stages")
    if not storage.is_dir(stages_dir):
        raise InputError(f"{run_dir} is not an sslpipe run directory (no stages/); run `sslpipe run CONFIG` first")
    return {name[: -len(".json")]: storage.read_json(storage.join(stages_dir, name))
            for name in storage.list_dir(stages_dir) if name.endswith(".json")}


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/report.json`` from the run's stage records.

    ``run_dir`` may be an object-store uri: the report is built from what is stored there, written
    there, and also written to a local copy (``storage.scratch_dir``) to open in a browser; the
    returned path is always that local, openable file.
    """
    remote = storage.is_uri(run_dir)
    shown = str(run_dir) if remote else str(Path(run_dir).resolve())
    run_dir = str(run_dir) if remote else Path(run_dir)
    stages = _read_stages(run_dir)
    figures: dict[str, Any] = {"run_dir": str(run_dir), "stages": sorted(stages)}
    parts = [f"<h1>sslpipe run report</h1><p>Run directory: <code>{html.escape(shown)}</code></p>"]
    if stages.get("evaluate"):
        parts += _evaluate_parts(stages["evaluate"], figures)
    if stages.get("pretrain"):
        parts += _pretrain_parts(stages["pretrain"], figures)
    if stages.get("curate"):
        parts += _curate_parts(stages["curate"], figures)
    timings = {name: round(float(s.get("seconds", 0.0)), 1) for name, s in stages.items() if "seconds" in s}
    figures["stage_seconds"] = timings
    parts.append("<h2>Stages</h2>" + html_table([[k, v] for k, v in timings.items()], ["stage", "seconds"]))
    cfg_path = storage.join(run_dir, "config.yaml")
    if storage.is_file(cfg_path):
        parts.append(f"<h2>Resolved config</h2><pre>{html.escape(storage.read_text(cfg_path))}</pre>")
    page = html_page("sslpipe report", "".join(parts))
    storage.write_json(storage.join(run_dir, "report.json"), figures)
    storage.write_text(storage.join(run_dir, "report.html"), page)
    local = storage.join(storage.scratch_dir(run_dir), "report.html")
    if remote:
        storage.write_text(local, page)
    return Path(local)
