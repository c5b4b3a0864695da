"""The whole demo chain on a real local Ray: shard -> curate -> SimCLR (2 DDP workers) -> kNN -> report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.run import run_pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_learns_and_reports(ray_session, tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path / 'demo'}"])
    run_dir = run_pipeline(cfg)

    report = json.loads((run_dir / "report.json").read_text())
    knn = report["knn"]["knn_top1"]
    # the bar: SSL must add at least 8 points over the same encoder at random init
    assert knn["pretrained"] >= knn["random_init"] + 0.08, knn
    assert 0.5 < knn["raw_pixels"] <= 1.0

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) >= 3
    assert history[-1]["loss"] < history[0]["loss"]

    manifest = pq.read_table(run_dir / "curated" / "manifest.parquet")
    summary = report["curation"]
    assert summary["kept"] + summary["removed"] == summary["input"] == manifest.num_rows
    assert len(set(manifest.column("key").to_pylist())) == manifest.num_rows
    assert summary["reasons"]["decode_error"] + summary["reasons"].get("missing_image", 0) == cfg.pool.corrupt
    assert summary["reasons"]["exact_dup"] >= cfg.pool.exact_duplicates * 0.9

    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # loss curve, kNN bars, removed-samples grid
    assert not re.search(r"(src|href)=['\"]https?://", html)  # self-contained
    assert "raw pixels" in html and "random" in html
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "config.yaml").exists()

    # every figure named in report.json appears in the page, next to its protocol
    headings = {"knn": "What was learned", "pretrain": "Pretraining", "curation": "Curation",
                "planted_truth": "Planted truth", "stage_seconds": "Stages"}
    for key, heading in headings.items():
        assert key in report and heading in html, key
    ev = report["knn"]
    for protocol, acc in ev["knn_protocols"].items():
        assert protocol in html and f"{acc:.4f}" in html
    assert f"{ev['linear_probe']['top1']:.4f}" in html and ev["linear_probe"]["protocol"] in html
    for fraction in ev["few_shot"]:
        assert f"<td>{fraction}</td>" in html
    assert "Robustness" in html and ev["robustness"]["protocol"] in html
    assert "head / medium / tail" in html and "Embedding of the held-out set" in html
