"""The labelled evaluation set, kept apart from the pool: where it comes from and what it holds.

A pool is what is trained on; it may have no labels at all (an uncurated collection has none).
Downstream evaluation needs labels, so it uses a set of its own: ``eval.bank_source`` (the kNN
bank and the linear probe's training images) and ``eval.query_source`` (held-out queries).
The online monitor samples both, the evaluate stage uses both whole, sweeps rank on the
monitor's figure. Labels in the pool, where present, stay in the manifest for reporting only.

The demo pool (``mnist-demo``) brings its own: its clean digits as the bank and the held-out
digits as queries, the protocol the demo always had (bank = the labelled images of the pool).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import storage

from curation.errors import InputError
from curation.shards import Sample, write_shards
from pipelines.config import PipelineConfig

BANK, QUERIES = "bank", "queries"


@dataclass
class EvalSets:
    """Shards of the labelled evaluation set; both None when the run has none."""

    bank: list[str] | None
    queries: list[str] | None

    @property
    def labelled(self) -> bool:
        return self.bank is not None and self.queries is not None


def resolve_eval_sets(cfg: PipelineConfig, pool_dir: str | Path, demo_queries: list[str] | None = None,
                      pool_shards: list[str] | None = None) -> EvalSets:
    """Shards for eval.bank_source / eval.query_source (an image folder is sharded into ``pool_dir``).

    ``demo_queries``: the held-out digits the demo pool wrote; with ``mnist-demo`` and no
    eval sources configured, they are the queries and the clean pool digits the bank.
    ``pool_shards``: the pool's own shards, reused as the bank when ``bank_source`` names the
    same location with the same limit (a labelled pool evaluated on its own images, as LightlySSL's
    CIFAR-10 protocol does): the folder is not sharded twice. Curation does not touch the bank.
    """
    from pipelines.sources import DEMO_SOURCE, resolve_location

    ev = cfg.eval
    if ev.bank_source is not None and ev.query_source is not None:
        # data.limit caps the pool, eval.limit the evaluation set: each folder is subsampled on its own
        limited = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, limit=ev.limit))
        if pool_shards and ev.bank_source == cfg.data.source and ev.limit == cfg.data.limit:
            bank = list(pool_shards)
        else:
            bank = resolve_location(ev.bank_source, storage.join(pool_dir, "bank"), limited)
        queries = resolve_location(ev.query_source, storage.join(pool_dir, "queries"), limited)
        return EvalSets(bank, queries)
    if cfg.data.source == DEMO_SOURCE and demo_queries:
        return EvalSets(write_demo_bank(cfg, storage.join(pool_dir, "bank")), list(demo_queries))
    return EvalSets(None, None)


def write_demo_bank(cfg: PipelineConfig, dest: str | Path) -> list[str]:
    """The demo's kNN bank: the clean, labelled digits the demo pool was planted from."""
    from curation.planting import encode_png
    from pipelines.sources import built_in, load_mnist_digits

    images, labels = load_mnist_digits()
    n_train = len(images) - cfg.data.demo_holdout  # the same digits build_demo_pool plants into the pool
    if cfg.data.limit:
        n_train = min(n_train, cfg.data.limit)
    samples = [Sample(f"bank{i:06d}", encode_png(images[i]), "png", int(labels[i])) for i in range(n_train)]
    return built_in(dest, lambda folder: [write_shards(samples, folder, cfg.data.shard_size, "bank", keep_existing=True)])[0]


def index_labelled_set(paths: list[str], what: str, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, labels, shard of each) of every readable sample of an evaluation set, read with Ray
    Data (one task per shard), nothing decoded.

    Raises InputError, before any training, when the set holds no labelled image: kNN and the
    probes would have nothing to score.
    """
    from pipelines.readers import map_shards

    ds = map_shards(paths, _keys_and_labels, rows_per_batch=1024)
    keys: list[str] = []
    sources: list[str] = []
    labels: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        keys.extend(str(k) for k in batch["key"])
        sources.extend(str(s) for s in batch["source"])
        labels.append(np.asarray(batch["label"], dtype=np.int64))
    label_arr = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if not (label_arr >= 0).any():
        raise InputError(
            f"eval.{'bank_source' if what == BANK else 'query_source'} ({source}) holds {len(keys)} image(s) and none "
            f"has a label: an evaluation set needs labels (class sub-folders root/<class>/<file>, or .cls members "
            f"in shards); leave eval.bank_source and eval.query_source unset for label-free metrics only")
    return np.array(keys, dtype=object), label_arr, np.array(sources, dtype=object)


def _keys_and_labels(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data UDF: sample rows -> key, label and shard of the rows that have image bytes."""
    ok = np.array([img is not None and not err for img, err in zip(batch["image"], batch["read_error"])], dtype=bool)
    return {"key": np.asarray(batch["key"], dtype=object)[ok], "label": np.asarray(batch["label"], np.int64)[ok],
            "source": np.asarray(batch["source"], dtype=object)[ok]}


def index_eval_sets(cfg: PipelineConfig, pool_rec: dict[str, Any]) -> dict[str, Any] | None:
    """Keys and labels of the whole labelled evaluation set of a run (what the monitor samples from),
    as ``build_monitor_sets`` takes them; None without one. An evaluation set without a single label is
    refused here, which ``run_pipeline`` calls before curation and training."""
    if not pool_rec.get("query_shards"):
        return None
    out = {}
    for what, field, source in ((BANK, "bank_shards", cfg.eval.bank_source),
                                (QUERIES, "query_shards", cfg.eval.query_source)):
        paths = pool_rec[field]
        keys, labels, sources = index_labelled_set(paths, what, source or cfg.data.source)
        if cfg.eval.limit and len(keys) > cfg.eval.limit:  # shards are used as they are: say so, do not ignore it
            raise InputError(
                f"eval.limit={cfg.eval.limit} caps image folders, and {source} is {len(keys)} samples in shards, used "
                f"whole: remove eval.limit, or point eval.{'bank_source' if what == BANK else 'query_source'} at a "
                f"smaller set (`sslpipe shard SRC DEST --limit N` writes a reproducible random subset)")
        out[what] = (paths, keys, labels, sources)
    return out
