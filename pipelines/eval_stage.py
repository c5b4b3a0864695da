"""The evaluate stage: an encoder on frozen features, with the baselines that give it meaning.

(The protocols themselves, kNN, linear probe, few-shot, long tail, robustness, are in
``pipelines/evaluation/``; this module runs them over a run's labelled sets.)

A kNN accuracy alone says little: on easy data raw pixels or a random network
already score high. So every evaluation reports the trained encoder next to
the same architecture at its random initialisation and next to raw pixels,
under a named protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import torch

from pipelines.readers import read_decoded
from pipelines.config import PipelineConfig
from pipelines.embedding import backbone_features
from pipelines.evaluation.knn import DINO, LIGHTLY_CIFAR10, KnnProtocol, knn_accuracy
from pipelines.models import build_method_from_config, view_recipe
from ssl_models.augment import normalize_batch


@dataclass
class LabelledArrays:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    #: rows of the set left out because they had no label (-1): reported, never silently lost
    unlabelled_skipped: int = 0


def collect(ds: ray.data.Dataset, labelled_only: bool = True) -> LabelledArrays:
    """Pull a decoded dataset to the driver, sorted by key so results are reproducible;
    ``labelled_only`` leaves out (and counts) rows without a label."""
    keys, images, labels = [], [], []
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        keys.extend(batch["key"].tolist())
        images.append(batch["image"])
        labels.append(batch["label"])
    if not images:
        raise ValueError("no decodable images to evaluate on")
    order = np.argsort(np.array(keys, dtype=object))
    x, y = np.concatenate(images)[order], np.concatenate(labels)[order]
    skipped = 0
    if labelled_only:
        skipped = int((y < 0).sum())
        x, y = x[y >= 0], y[y >= 0]
    return LabelledArrays(x, y, skipped)


def load_labelled(paths: list[str], cfg: PipelineConfig) -> LabelledArrays:
    """A whole labelled evaluation set, decoded as the training feed decodes (``data.intensity``)."""
    return collect(read_decoded(paths, cfg.data.image_size, cfg.data.channels, cfg.data.intensity))


def label_free_evaluation(cfg: PipelineConfig, backbone: torch.nn.Module, cur_rec: dict[str, Any]
                          ) -> dict[str, Any] | None:
    """The evaluate stage's label-free figures: on the same pool sample the monitor used every epoch
    (``train.monitor_pool_samples`` curated images; 0 turns both off)."""
    from pipelines.monitor import pool_index, pool_sample_keys, selected_dataset

    if cfg.train.monitor_pool_samples == 0:
        return None
    paths, keys, _ = pool_index(cur_rec)
    if len(keys) < 2:
        return None
    images = collect(selected_dataset(paths, pool_sample_keys(cfg, keys).tolist(), cfg), labelled_only=False).images
    return label_free_report(cfg, backbone, images)


def label_free_report(cfg: PipelineConfig, backbone: torch.nn.Module, images: np.ndarray) -> dict[str, Any]:
    """Label-free metrics of the pretrained encoder next to the same architecture at random
    initialisation, on ``images`` (uint8 NHWC: the pool sample the online monitor used)."""
    from pipelines.monitor import label_free_on_images

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    with torch.compiler.set_stance("force_eager"):
        result = {"pretrained": label_free_on_images(backbone, x, cfg),
                  "random_init": label_free_on_images(build_method_from_config(cfg).backbone, x, cfg)}
    return {"protocol": f"backbone features of {len(x)} random curated pool images (evaluation view; alignment "
                        f"on two training-recipe views)", "sample_size": int(len(x)), **result}


@torch.no_grad()
def embed(backbone: torch.nn.Module, images: np.ndarray, cfg: PipelineConfig, batch_size: int = 512) -> np.ndarray:
    """Frozen features of uint8 NHWC images with the evaluation view (resize + normalise)."""
    backbone.eval()
    recipe = view_recipe(cfg)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    return backbone_features(backbone, nchw, lambda x: normalize_batch(x, recipe), batch_size=batch_size).numpy()


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """The no-learning baseline: flattened, mean-centred pixels."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x - x.mean(axis=1, keepdims=True)


def knn_report(
    cfg: PipelineConfig, backbone: torch.nn.Module, bank: LabelledArrays, test: LabelledArrays
) -> dict[str, Any]:
    """kNN top-1 of raw pixels, the random-init encoder and ``backbone``, under the config's protocol."""
    ev = cfg.eval
    protocol = KnnProtocol(ev.knn_k, ev.knn_temperature, f"weighted kNN k={ev.knn_k} T={ev.knn_temperature}")
    random_backbone = build_method_from_config(cfg).backbone

    def score(train_x: np.ndarray, test_x: np.ndarray) -> float:
        return knn_accuracy(train_x, bank.labels, test_x, test.labels, protocol)

    results = {
        "raw_pixels": score(raw_pixels(bank.images), raw_pixels(test.images)),
        "random_init": score(embed(random_backbone, bank.images, cfg), embed(random_backbone, test.images, cfg)),
        "pretrained": score(embed(backbone, bank.images, cfg), embed(backbone, test.images, cfg)),
    }
    return {
        "protocol": protocol.name,
        "bank_size": int(len(bank.labels)),
        "test_size": int(len(test.labels)),
        "unlabelled_skipped": {"bank": bank.unlabelled_skipped, "queries": test.unlabelled_skipped},
        "knn_top1": results,
        "gain_over_random_init": results["pretrained"] - results["random_init"],
        "gain_over_raw_pixels": results["pretrained"] - results["raw_pixels"],
    }


def full_evaluation(
    cfg: PipelineConfig, backbone: torch.nn.Module, bank: LabelledArrays, test: LabelledArrays, out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Everything ``eval`` reports: kNN vs baselines, both named kNN protocols, linear probe,
    few-shot, per-class and head/medium/tail accuracy, robustness, and a 2-D embedding plot."""
    from pipelines.evaluation.embedding_plot import plot_embedding
    from pipelines.evaluation.few_shot import few_shot
    from pipelines.evaluation.linear_probe import linear_probe_predict
    from pipelines.evaluation.long_tail import class_counts, head_medium_tail_accuracy
    from pipelines.evaluation.robustness import KINDS, corrupt, robustness_drop

    ev = cfg.eval
    on = ev.on_labelled_sets()  # null keys: on, since labelled sets are at hand
    result = knn_report(cfg, backbone, bank, test)
    train_x, test_x = embed(backbone, bank.images, cfg), embed(backbone, test.images, cfg)
    result["knn_protocols"] = {
        p.name: knn_accuracy(train_x, bank.labels, test_x, test.labels, p) for p in (LIGHTLY_CIFAR10, DINO)
    }
    num_classes = int(max(bank.labels.max(), test.labels.max())) + 1
    if on["linear_probe"]:
        pred = linear_probe_predict(train_x, bank.labels, test_x, seed=cfg.seed, num_classes=num_classes)
        result["linear_probe"] = {"protocol": "logistic regression on standardised frozen features, L-BFGS, "
                                  "weight decay chosen on a 20 % split", "top1": float(np.mean(pred == test.labels))}
        hmt = head_medium_tail_accuracy(pred, test.labels, class_counts(bank.labels, num_classes))
        result["per_class"] = {"source": "linear probe", **{k: v for k, v in hmt.items()}}
    if on["few_shot_tries"]:
        shots = few_shot(train_x, bank.labels, test_x, test.labels, fractions=(0.01, 0.1), tries=on["few_shot_tries"],
                         seed=cfg.seed, classifier="linear")
        result["few_shot"] = {f"{int(f * 100)}%": dict(v) for f, v in shots.items()}
    if on["robustness"]:
        protocol = KnnProtocol(ev.knn_k, ev.knn_temperature, "robustness")
        clean = knn_accuracy(train_x, bank.labels, test_x, test.labels, protocol)
        by_kind: dict[str, dict[int, float]] = {}
        for kind in KINDS:
            by_kind[kind] = {}
            for severity in range(1, 6):
                noisy = corrupt(test.images, kind, severity, seed=cfg.seed)
                by_kind[kind][severity] = knn_accuracy(train_x, bank.labels, embed(backbone, noisy, cfg), test.labels,
                                                       protocol)
        result["robustness"] = {"protocol": f"kNN k={ev.knn_k} T={ev.knn_temperature} on corrupted held-out images",
                                **robustness_drop(clean, by_kind)}
    if on["embedding_plot"] and out_dir is not None:
        path = plot_embedding(test_x, test.labels, Path(out_dir) / "embedding.png", seed=cfg.seed,
                              title="held-out features of the pretrained encoder")
        result["embedding_plot"] = str(path)
    return result
