"""Your own collection (issue #28): a pool without labels runs end to end (curation balances on clusters,
pretraining, sweeps, report), evaluation uses a labelled set of its own or label-free metrics, and asking for
labels that do not exist fails at load."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.errors import InputError
from curation.shards import Sample, write_shard
from pipelines.config import ConfigError, load_config
from pipelines.sweep import parse_search_space

REPO = Path(__file__).resolve().parent.parent
LABEL_FREE = ("rankme", "alignment", "uniformity", "feature_std")
TINY = ["backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16", "train.num_workers=0",
        "train.batch_size=64", "train.warmup_epochs=0", "train.monitor_pool_samples=128", "curate.near_dedup=false"]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def flat_unlabelled(mnist_digits, tmp_path_factory) -> Path:
    """A flat folder of digits: no class sub-folders, so no labels (how a photo dump arrives)."""
    images, _ = mnist_digits
    root = tmp_path_factory.mktemp("flat")
    for i in range(320):
        Image.fromarray(images[i]).save(root / f"IMG_{i:05d}.png")
    return root


def _labelled_folder(root: Path, images: np.ndarray, labels: np.ndarray, start: int, n: int) -> Path:
    for i in range(start, start + n):
        (root / f"digit{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / f"digit{labels[i]}" / f"{i:05d}.png")
    return root


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_unlabelled_pool_without_any_labelled_set_reports_label_free_metrics(ray_session, flat_unlabelled,
                                                                             tmp_path: Path) -> None:
    from pipelines.run import run_pipeline

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.source={flat_unlabelled}", "data.shard_size=100",
                             "train.epochs=2", "curate.embedder=random_convnet", "curate.balance_fraction=0.8", *TINY])
    run_dir = run_pipeline(cfg)
    history = _history(run_dir)
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:  # every epoch: the label-free metrics, finite; no kNN (there is nothing to score it on)
        assert all(math.isfinite(h[k]) for k in LABEL_FREE) and "knn_top1" not in h, h
    assert 1.0 <= history[-1]["rankme"] <= 32 and 0 < history[-1]["feature_std"] <= 1.5
    stages = run_dir / "stages"
    ev = json.loads((stages / "evaluate.json").read_text())
    assert "knn_top1" not in ev and ev["label_free"]["sample_size"] == 128
    # the evaluate stage scores the final encoder on the very sample the monitor used every epoch
    assert ev["label_free"]["pretrained"]["rankme"] == pytest.approx(history[-1]["rankme"], rel=1e-4)
    assert ev["label_free"]["random_init"]["rankme"] != pytest.approx(history[-1]["rankme"], rel=1e-3)
    # curation balanced on clusters of embeddings; the manifest keeps the (absent) labels
    summary = json.loads((stages / "curate.json").read_text())["summary"]
    assert summary["labels"]["input"] == {"labelled": 0, "unlabelled": 320}
    assert summary["reasons"].get("pruned_by_balance", 0) == 64 and len(summary["balance"]["cluster_sizes_before"]) > 1
    manifest = pq.read_table(run_dir / "curated" / "manifest.parquet").to_pylist()
    assert len(manifest) == 320 and {r["label"] for r in manifest} == {-1}
    assert all(r["cluster_ids"] for r in manifest if r["reason"] in ("ok", "pruned_by_balance"))
    html = (run_dir / "report.html").read_text()
    assert "What was learned (no labelled evaluation set)" in html and "Label-free metrics per epoch" in html
    assert "320 unlabelled in the input" in html


def test_mixed_pool_with_a_separate_labelled_evaluation_set(ray_session, mnist_digits, tmp_path: Path) -> None:
    """The issue's case: pool labels partial or absent, a labelled folder to evaluate on. kNN every epoch and in the
    evaluate stage comes from that folder; pool labels are only counted; a flat 16-bit image is rejected."""
    from pipelines.run import run_pipeline

    images, labels = mnist_digits
    samples = [Sample(f"a{i:05d}", _png(images[i]), "png", int(labels[i]) if i % 2 else -1) for i in range(300)]
    ramp = np.tile(np.linspace(0, 4000, 64).round().astype(np.uint16), (64, 1))  # a 12-bit scan
    samples += [Sample("b_scan12", _png(ramp), "png"), Sample("b_flat16", _png(np.full((64, 64), 2000, np.uint16)), "png")]
    for start in range(0, len(samples), 100):
        write_shard(samples[start : start + 100], tmp_path / "pool" / f"shard-{start // 100:06d}.tar")
    bank = _labelled_folder(tmp_path / "bank", images, labels, 1000, 400)
    queries = _labelled_folder(tmp_path / "queries", images, labels, 2000, 200)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.source={tmp_path / 'pool'}",
                             f"eval.bank_source={bank}", f"eval.query_source={queries}", "train.epochs=2",
                             "eval.few_shot_tries=0", "eval.robustness=false", "eval.embedding_plot=false", *TINY])
    run_dir = run_pipeline(cfg)
    history = _history(run_dir)
    assert all(0.3 < h["knn_top1"] <= 1 and h["monitor_query_classes"] == 10 for h in history), history
    assert all(math.isfinite(h["rankme"]) for h in history)
    ev = json.loads((run_dir / "stages" / "evaluate.json").read_text())
    assert ev["bank_size"] == 400 and ev["test_size"] == 200  # the evaluation set, not the pool
    assert 0.3 < ev["knn_top1"]["pretrained"] <= 1 and "linear_probe" in ev and "label_free" in ev
    summary = json.loads((run_dir / "stages" / "curate.json").read_text())["summary"]
    assert summary["labels"]["input"] == {"labelled": 150, "unlabelled": 152}
    assert summary["reasons"]["low_variance"] == 1 and summary["kept"] == 301
    manifest = {r["key"]: r for r in pq.read_table(run_dir / "curated" / "manifest.parquet").to_pylist()}
    assert manifest["b_flat16"]["reason"] == "low_variance" and manifest["b_scan12"]["kept"]
    assert manifest["a00001"]["label"] == labels[1] and manifest["a00000"]["label"] == -1


# --------------------------------------------------------------------------- asking for labels that are not there


def test_data_eval_source_is_refused_naming_the_keys_that_replace_it() -> None:
    with pytest.raises(ConfigError, match="data.eval_source.*eval.query_source.*eval.bank_source"):
        load_config(None, ["data.source=/x", "data.eval_source=/y"])
    with pytest.raises(ConfigError, match="'eval.bank_source' is set but 'eval.query_source' is not"):
        load_config(None, ["data.source=/x", "eval.bank_source=/y"])


def test_checkpoints_written_before_the_evaluation_set_keys_still_load(tmp_path: Path) -> None:
    """A checkpoint stores its resolved config; one from before eval.bank_source/query_source holds
    data.eval_source, which means: queries = that set, bank = the (labelled) pool."""
    import dataclasses

    import torch

    from pipelines.checkpoints import load_checkpoint
    from pipelines.config import config_to_dict

    old = config_to_dict(load_config(None, ["data.source=/data/train"]))
    old["data"]["eval_source"] = "/data/test"
    for section in ("bank_source", "query_source", "limit"):
        old["eval"].pop(section)
    old["eval"].update(linear_probe=True, few_shot_tries=5, robustness=True, embedding_plot=True)  # as stored then
    torch.save({"method": {}, "config": old}, tmp_path / "old.pt")
    cfg, _ = load_checkpoint(tmp_path / "old.pt")
    assert (cfg.eval.bank_source, cfg.eval.query_source) == ("/data/train", "/data/test")
    demo = config_to_dict(load_config(None))  # the demo stored eval_source: null
    demo["data"]["eval_source"] = None
    torch.save({"method": {}, "config": demo}, tmp_path / "demo.pt")
    assert dataclasses.asdict(load_checkpoint(tmp_path / "demo.pt")[0]) == dataclasses.asdict(load_config(None))


@pytest.mark.parametrize("key", ["eval.linear_probe=true", "eval.few_shot_tries=3", "eval.robustness=true",
                                 "eval.embedding_plot=true"])
def test_a_label_based_evaluation_without_labels_is_refused_at_load(key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key.split('=')[0]}' needs labels.*eval.bank_source"):
        load_config(None, ["data.source=/photos", key])
    load_config(None, ["data.source=/photos", key.split("=")[0] + "=" + ("0" if "tries" in key else "false")])
    load_config(None, ["data.source=/photos", "eval.bank_source=/a", "eval.query_source=/b", key])


def test_sweeps_rank_by_knn_only_with_labels_and_by_rankme_without(tmp_path: Path) -> None:
    search = {"method.temperature": {"grid": [0.1, 0.5]}}
    unlabelled = {"data": {"source": "/photos"}}
    assert parse_search_space({"config": unlabelled, "search": search}, tmp_path).metric == "rankme"
    spec = parse_search_space({"config": unlabelled, "search": search, "metric": "uniformity"}, tmp_path)
    assert (spec.metric, spec.mode) == ("uniformity", "min")
    with pytest.raises(ConfigError, match="knn_top1 needs a labelled evaluation set.*eval.bank_source"):
        parse_search_space({"config": unlabelled, "search": search, "metric": "knn_top1"}, tmp_path)
    with pytest.raises(ConfigError, match="collapsed encoder"):
        parse_search_space({"config": unlabelled, "search": search, "metric": "alignment"}, tmp_path)
    with pytest.raises(ConfigError, match="'mode'.*use max"):
        parse_search_space({"config": unlabelled, "search": search, "mode": "min"}, tmp_path)
    labelled = {"data": {"source": "/photos"}, "eval": {"bank_source": "/a", "query_source": "/b"}}
    assert parse_search_space({"config": labelled, "search": search}, tmp_path).metric == "knn_top1"


def test_an_evaluation_set_without_labels_is_refused_before_curation(ray_session, flat_unlabelled, mnist_digits,
                                                                      tmp_path: Path) -> None:
    from pipelines.run import run_pipeline

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.source={flat_unlabelled}",
                             f"eval.bank_source={flat_unlabelled}", f"eval.query_source={flat_unlabelled}", *TINY])
    with pytest.raises(InputError, match="eval.bank_source .* none has a label"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "stages" / "curate.json").exists()
    # eval.limit caps image folders; on shards (used whole) it is refused, not ignored
    images, labels = mnist_digits
    write_shard([Sample(f"e{i:03d}", _png(images[i]), "png", int(labels[i])) for i in range(60)],
                tmp_path / "labelled" / "shard-000000.tar")
    limited = load_config(None, [f"run_dir={tmp_path / 'run2'}", f"data.source={flat_unlabelled}",
                                 f"eval.bank_source={tmp_path / 'labelled'}", f"eval.query_source={tmp_path / 'labelled'}",
                                 "eval.limit=50", *TINY])
    with pytest.raises(InputError, match="eval.limit=50 caps image folders"):
        run_pipeline(limited)
    assert not (tmp_path / "run2" / "stages" / "curate.json").exists()


@pytest.mark.slow
def test_a_sweep_on_an_unlabelled_pool_ranks_trials_by_rankme(ray_session, flat_unlabelled, tmp_path: Path) -> None:
    from pipelines.sweep import run_sweep

    base = {"run_dir": str(tmp_path / "run"), "data": {"source": str(flat_unlabelled), "shard_size": 160}}
    spec = parse_search_space({"config": base, "overrides": TINY + ["train.epochs=2"], "scheduler": "fifo",
                               "search": {"method.temperature": {"grid": [0.05, 1.0]}}, "max_concurrent": 1}, tmp_path)
    result = run_sweep(spec.base, spec)
    rows = pq.read_table(result.table_path).to_pylist()
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows), rows
    assert all(math.isfinite(r["rankme"]) for r in rows) and rows[0]["rankme"] != rows[1]["rankme"]
    assert result.best["rankme"] == max(r["rankme"] for r in rows)
    assert "RankMe" in result.report_path.read_text()
    assert result.best_config_path.read_text().startswith(f"# best trial {result.best['trial_id']} of sweep "
                                                          f"'sweep': RankMe")
