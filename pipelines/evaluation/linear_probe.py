"""Linear probe: multinomial logistic regression on frozen, standardised features.

Why: the linear probe is the second standard read-out of an SSL embedding
(solo-learn, DINO, DINOv2 all report it). It asks whether classes are
*linearly* separable in the embedding, which a kNN vote does not.

Design choices and their reasons:
- Features are standardised with the training mean/std, so one weight-decay
  grid suits embeddings of any scale (a ResNet's 512-d pooled features and a
  ViT's CLS token differ by orders of magnitude).
- The problem is convex and small (D x C weights), so full-batch L-BFGS in
  torch converges to the optimum deterministically, with no learning-rate or
  epoch schedule to tune; only the L2 strength remains, and it is chosen on a
  stratified validation split held out from the training set (never on test).
- The loss is mean cross-entropy + wd/2 * ||W||^2 (bias not penalised), i.e.
  sklearn's ``LogisticRegression(C=1 / (wd * N))``, so results are comparable
  to the sklearn reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_WEIGHT_DECAYS",
    "LinearProbe",
    "fit_linear_probe",
    "stratified_split",
    "linear_probe_predict",
    "linear_probe_accuracy",
]

#: L2 strengths tried on the validation split (per-sample-mean loss scale).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: Used when the training set is too small to hold out a validation split.
FALLBACK_WEIGHT_DECAY = 1e-3


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: the standardisation and the linear map, kept together so they can't drift apart."""

    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    weight_decay: float
    validation_accuracy: float | None  # of the chosen weight decay; None when no split was possible

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[M, C] class scores for raw (unstandardised) features."""
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[M] int64 predicted labels."""
        return self.logits(x).argmax(axis=1).astype(np.int64)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, held-out) with about ``fraction`` of each class held out.

    Every class keeps at least one training example, so a class is never
    invisible to the fit; classes with a single example are not held out at all.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = min(int(round(fraction * idx.size)), idx.size - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _standardise_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = x.std(axis=0, dtype=np.float64).astype(np.float32)
    # Constant features (dead units are common in SSL embeddings) must not divide by 0.
    return mean, np.maximum(std, 1e-6).astype(np.float32)


def _fit_lbfgs(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE + wd/2 ||W||^2 with full-batch L-BFGS (strong-Wolfe line search)."""
    d = z.shape[1]
    if init is None:
        w = torch.zeros(num_classes, d, dtype=z.dtype)
        b = torch.zeros(num_classes, dtype=z.dtype)
    else:
        w, b = init[0].clone(), init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        # max |gradient| 1e-5: 10x stricter than sklearn's lbfgs default (tol=1e-4); stricter still costs
        # more function evaluations for predictions that hardly move
        tolerance_grad=1e-5,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    seed: int,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    max_iter: int = 500,
) -> LinearProbe:
    """Fit the probe; choose weight decay on a stratified validation split, then refit on all of train.

    Args:
        train_x: [N, D] frozen features.
        train_y: [N] integer labels.
        seed: fixes the validation split (L-BFGS itself is deterministic).
        num_classes: defaults to max label + 1.
        weight_decays: grid to search; a single value skips the search.
        val_fraction: share of each class held out for the search.
        max_iter: L-BFGS iterations per fit.

    Computation is in float64: the matrices are small and it removes any
    doubt that a difference from the reference comes from round-off.
    """
    x = np.asarray(train_x, dtype=np.float32)
    y_np = np.asarray(train_y).astype(np.int64)
    if x.ndim != 2 or x.shape[0] != y_np.shape[0]:
        raise ValueError("train_x must be [N, D] with one label per row")
    if num_classes is None:
        num_classes = int(y_np.max()) + 1
    weight_decays = list(weight_decays)
    if not weight_decays:
        raise ValueError("weight_decays must not be empty")

    chosen_wd, best_val = _choose_weight_decay(x, y_np, num_classes, weight_decays, val_fraction, seed, max_iter)
    mean, std = _standardise_stats(x)
    z = torch.from_numpy((x - mean) / std).double()
    w, b = _fit_lbfgs(z, torch.from_numpy(y_np), num_classes, chosen_wd, max_iter, None)
    return LinearProbe(
        mean=mean,
        std=std,
        weight=w.numpy().astype(np.float32),
        bias=b.numpy().astype(np.float32),
        weight_decay=chosen_wd,
        validation_accuracy=best_val,
    )


def _choose_weight_decay(x: np.ndarray, y_np: np.ndarray, num_classes: int, weight_decays: list[float],
                         val_fraction: float, seed: int, max_iter: int) -> tuple[float, float | None]:
    """(weight decay, its validation accuracy): the best of the grid on a stratified validation split.

    A single value is taken as given (no split, accuracy None); a split too small to hold a
    validation sample falls back to ``FALLBACK_WEIGHT_DECAY``. Features are standardised with the
    training part's statistics only, so the validation accuracy is not flattered by its own.
    """
    chosen_wd = float(weight_decays[0])
    best_val: float | None = None
    if len(weight_decays) > 1:
        tr, va = stratified_split(y_np, val_fraction, seed)
        if va.size == 0:
            chosen_wd = FALLBACK_WEIGHT_DECAY
        else:
            mean, std = _standardise_stats(x[tr])
            z_tr = torch.from_numpy((x[tr] - mean) / std).double()
            z_va = torch.from_numpy((x[va] - mean) / std).double()
            y_tr = torch.from_numpy(y_np[tr])
            y_va = torch.from_numpy(y_np[va])
            init = None
            # Strongest penalty first: each solution warm-starts the next, weaker one.
            for wd in sorted(weight_decays, reverse=True):
                w, b = _fit_lbfgs(z_tr, y_tr, num_classes, wd, max_iter, init)
                init = (w, b)
                acc = float(((z_va @ w.T + b).argmax(1) == y_va).double().mean())
                # Strict '>' keeps the stronger penalty on ties (the simpler model).
                if best_val is None or acc > best_val:
                    best_val, chosen_wd = acc, float(wd)
    return chosen_wd, best_val


def linear_probe_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    seed: int,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
) -> np.ndarray:
    """[M] predicted test labels; use these for per-class / long-tail accuracy."""
    probe = fit_linear_probe(
        train_x, train_y, seed=seed, num_classes=num_classes, weight_decays=weight_decays
    )
    return probe.predict(test_x)


def linear_probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    seed: int,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
) -> float:
    """Top-1 test accuracy in [0, 1] of the linear probe."""
    test_y = np.asarray(test_y).astype(np.int64)
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    preds = linear_probe_predict(
        train_x, train_y, test_x, seed=seed, num_classes=num_classes, weight_decays=weight_decays
    )
    return float(np.mean(preds == test_y))
