"""Few-shot (semi-supervised) evaluation: classify with only 1 % / 10 % of the labels.

Why: an embedding is most useful when labels are scarce; SimCLR, BYOL and
DINO all report 1 % and 10 % label results. Which examples get labelled
changes the result a lot at 1 %, so we repeat over several random
subsets ("tries") and report mean ± std instead of one lucky draw.
Subsets are stratified (same fraction of every class, at least one per
class) so that no class is absent from the labelled set by chance.
"""

from __future__ import annotations

from typing import Literal, Sequence, TypedDict

import numpy as np

from pipelines.evaluation.knn import DINO, KnnProtocol, knn_accuracy
from pipelines.evaluation.linear_probe import DEFAULT_WEIGHT_DECAYS, linear_probe_accuracy

__all__ = ["FewShotResult", "stratified_label_subset", "few_shot"]


class FewShotResult(TypedDict):
    """Accuracy over tries at one label fraction."""

    mean: float
    std: float  # sample std (ddof=1) over tries; 0.0 for a single try
    tries: list[float]
    n_labelled: int  # labelled examples per try (same for every try)


def stratified_label_subset(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random subset holding ``round(fraction * n_c)`` examples of each class c, at least 1.

    Per-class rounding (rather than one global draw) keeps rare classes
    represented, which matters for long-tailed data.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = min(idx.size, max(1, int(round(fraction * idx.size))))
        chosen.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(chosen))


def few_shot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    fractions: Sequence[float] = (0.01, 0.1),
    tries: int = 5,
    seed: int = 0,
    classifier: Literal["linear", "knn"] = "linear",
    *,
    knn_protocol: KnnProtocol = DINO,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
) -> dict[float, FewShotResult]:
    """Accuracy with a fraction of training labels, repeated over ``tries`` random stratified subsets.

    Args:
        train_x, train_y: labelled pool the subsets are drawn from.
        test_x, test_y: always the full test set.
        fractions: label fractions, e.g. (0.01, 0.1).
        tries: subsets per fraction.
        seed: fixes every subset (try t of fraction i uses its own derived stream).
        classifier: "linear" (probe, weight decay chosen on a split of the subset)
            or "knn" (weighted vote under ``knn_protocol``; k is clipped to the subset size).

    Returns:
        {fraction: {"mean", "std", "tries", "n_labelled"}}, accuracies in [0, 1].
    """
    if tries < 1:
        raise ValueError("tries must be >= 1")
    if classifier not in ("linear", "knn"):
        raise ValueError(f"unknown classifier {classifier!r}")
    train_y = np.asarray(train_y).astype(np.int64)
    results: dict[float, FewShotResult] = {}
    for i, fraction in enumerate(fractions):
        accs: list[float] = []
        n_labelled = 0
        for t in range(tries):
            # Independent, reproducible stream per (fraction, try): adding a
            # fraction or a try does not change the subsets of the others.
            rng = np.random.default_rng([seed, i, t])
            idx = stratified_label_subset(train_y, fraction, rng)
            n_labelled = int(idx.size)
            if classifier == "linear":
                acc = linear_probe_accuracy(
                    train_x[idx], train_y[idx], test_x, test_y, seed=seed + t, weight_decays=weight_decays
                )
            else:
                acc = knn_accuracy(train_x[idx], train_y[idx], test_x, test_y, knn_protocol)
            accs.append(acc)
        arr = np.asarray(accs)
        results[float(fraction)] = FewShotResult(
            mean=float(arr.mean()),
            std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            tries=accs,
            n_labelled=n_labelled,
        )
    return results
