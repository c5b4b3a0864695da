"""Per-class and head / medium / tail accuracy.

Why: pretraining on *uncurated* data is expected to favour frequent concepts;
the overall accuracy hides that, because frequent classes dominate it. Splitting
classes by how often they occur in the training set and averaging per-class
accuracy inside each group (the many/medium/few-shot read-out of OLTR,
Liu et al. 2019) shows whether curation helped the tail.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

__all__ = [
    "GROUPS",
    "class_counts",
    "per_class_accuracy",
    "frequency_groups",
    "HeadMediumTail",
    "head_medium_tail_accuracy",
]

GROUPS: tuple[str, str, str] = ("head", "medium", "tail")


def class_counts(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """[C] number of examples per class (classes with none get 0)."""
    labels = np.asarray(labels).astype(np.int64)
    return np.bincount(labels, minlength=num_classes or 0)


def per_class_accuracy(pred: np.ndarray, true: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """[C] accuracy of each class; NaN for a class with no test example (undefined, not 0)."""
    pred = np.asarray(pred).astype(np.int64)
    true = np.asarray(true).astype(np.int64)
    if pred.shape != true.shape:
        raise ValueError("pred and true differ in shape")
    if num_classes is None:
        num_classes = int(max(pred.max(initial=-1), true.max(initial=-1))) + 1
    total = np.bincount(true, minlength=num_classes).astype(np.float64)
    correct = np.bincount(true[pred == true], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def frequency_groups(
    train_counts: np.ndarray, thresholds: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Partition class ids into head / medium / tail by training frequency.

    thresholds=None: sort classes by count (descending; ties by class id, so the
    split is deterministic) and cut into thirds; the remainder goes to the first
    groups (np.array_split). Suits any dataset, including balanced ones.

    thresholds=(many, few): head = count > many, tail = count < few, medium =
    the rest; (100, 20) is the ImageNet-LT / Places-LT convention.
    """
    counts = np.asarray(train_counts).astype(np.int64)
    if counts.ndim != 1:
        raise ValueError("train_counts must be a 1-D array of per-class counts")
    if thresholds is None:
        order = np.lexsort((np.arange(counts.size), -counts))
        head, medium, tail = np.array_split(order, 3)
        return {"head": np.sort(head), "medium": np.sort(medium), "tail": np.sort(tail)}
    many, few = thresholds
    if few > many:
        raise ValueError("thresholds must be (many, few) with few <= many")
    ids = np.arange(counts.size)
    return {
        "head": ids[counts > many],
        "medium": ids[(counts <= many) & (counts >= few)],
        "tail": ids[counts < few],
    }


class HeadMediumTail(TypedDict):
    """Result of :func:`head_medium_tail_accuracy`; group accuracies are NaN for an empty group."""

    head: float
    medium: float
    tail: float
    overall: float  # sample-weighted top-1 accuracy
    mean_per_class: float  # balanced accuracy over classes that have test examples
    per_class: list[float]  # NaN where a class has no test example
    classes: dict[str, list[int]]  # class ids in each group
    n_classes: dict[str, int]  # classes in each group that have test examples
    n_test: dict[str, int]  # test examples whose true class is in each group


def head_medium_tail_accuracy(
    pred: np.ndarray,
    true: np.ndarray,
    train_counts: np.ndarray,
    thresholds: tuple[int, int] | None = None,
) -> HeadMediumTail:
    """Mean per-class accuracy inside head / medium / tail groups, plus overall figures.

    Args:
        pred, true: [M] predicted and true test labels.
        train_counts: [C] training examples per class (see :func:`class_counts`);
            it defines the classes and their frequency.
        thresholds: None for thirds, or (many, few), see :func:`frequency_groups`.

    Group accuracy is the mean of per-class accuracies (each class counts once),
    so a group's figure does not depend on how many test images each class has.
    """
    counts = np.asarray(train_counts)
    num_classes = counts.size
    true = np.asarray(true).astype(np.int64)
    pred = np.asarray(pred).astype(np.int64)
    if true.size and (true.max() >= num_classes or true.min() < 0):
        raise ValueError("a true label is outside [0, len(train_counts))")
    acc = per_class_accuracy(pred, true, num_classes)
    groups = frequency_groups(counts, thresholds)
    test_per_class = np.bincount(true, minlength=num_classes)

    group_acc: dict[str, float] = {}
    n_classes: dict[str, int] = {}
    n_test: dict[str, int] = {}
    for g in GROUPS:
        ids = groups[g]
        present = ids[test_per_class[ids] > 0]
        group_acc[g] = float(np.mean(acc[present])) if present.size else float("nan")
        n_classes[g] = int(present.size)
        n_test[g] = int(test_per_class[ids].sum())
    return HeadMediumTail(
        head=group_acc["head"],
        medium=group_acc["medium"],
        tail=group_acc["tail"],
        overall=float(np.mean(pred == true)) if true.size else float("nan"),
        mean_per_class=float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else float("nan"),
        per_class=[float(a) for a in acc],
        classes={g: [int(c) for c in groups[g]] for g in GROUPS},
        n_classes=n_classes,
        n_test=n_test,
    )
