"""bench/redundant_pool.py (issue #33): the planted redundancy and tail are what the plan says, copies are
near (not exact) copies of the named source, and the pool is a pure function of the seed."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("redundant_pool", REPO / "bench" / "redundant_pool.py")
assert _spec is not None and _spec.loader is not None
redundant_pool = importlib.util.module_from_spec(_spec)
sys.modules["redundant_pool"] = redundant_pool  # dataclasses look their module up there
_spec.loader.exec_module(redundant_pool)


def _scenes(num_classes: int, per_class: int, seed: int = 0) -> list[np.ndarray]:
    """Distinct smooth 32x32 RGB scenes: low-frequency noise upsampled, so a near copy stays near its source."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_classes):
        coarse = rng.integers(0, 256, size=(per_class, 4, 4, 3), dtype=np.uint8)
        out.append(np.stack([np.asarray(Image.fromarray(c).resize((32, 32), Image.BICUBIC)) for c in coarse]))
    return out


@pytest.mark.parametrize("redundancy", [0.3, 0.6, 0.9])
def test_the_plan_holds_the_asked_redundancy_and_a_100_to_1_tail(redundancy: float) -> None:
    plan = redundant_pool.plan_pool(2000, redundancy, imbalance=100.0, head_classes=3)
    total = plan.n_unique + plan.n_copies
    assert abs(plan.redundancy - redundancy) <= 1 / total
    assert 95 <= plan.unique_per_class[0] / plan.unique_per_class[-1] <= 105
    assert plan.unique_per_class == sorted(plan.unique_per_class, reverse=True)
    assert plan.copies_per_class[3:] == [0] * 7 and min(plan.copies_per_class[:3]) > 0  # head classes only


def _decode(data: bytes) -> np.ndarray:
    """At 8x8: the scene's layout, which a near copy keeps (its crop and shift move pixels, not the scene)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((8, 8), Image.BOX), dtype=np.float32)


def test_samples_carry_the_planted_truth_and_copies_are_near_their_source() -> None:
    plan = redundant_pool.plan_pool(300, 0.6, num_classes=4, imbalance=10.0, head_classes=2, sources_per_class=3)
    samples = redundant_pool.build_samples(_scenes(4, 200), plan, seed=7)
    copies = [s for s in samples if s.meta["planted"] == "near_copy"]
    originals = {s.key: s for s in samples if s.meta["planted"] == "original"}
    assert len(samples) == plan.n_unique + plan.n_copies == len(copies) + len(originals)
    assert len(copies) / len(samples) == pytest.approx(plan.redundancy) and abs(plan.redundancy - 0.6) < 0.01
    assert len({s.key for s in samples}) == len(samples)
    keys = list(originals)
    bank = np.stack([_decode(originals[k].image) for k in keys]).reshape(len(keys), -1)
    for copy in copies:
        assert copy.image != originals[copy.meta["of"]].image  # near, not exact
        assert copy.label == originals[copy.meta["of"]].label
        dist = np.linalg.norm(bank - _decode(copy.image).reshape(1, -1), axis=1)
        assert keys[int(dist.argmin())] == copy.meta["of"]  # its nearest unique image is its source
    sources = {c.meta["of"] for c in copies}
    assert len(sources) == 2 * 3  # sources_per_class scenes in each of the 2 head classes


def test_the_pool_is_a_function_of_the_seed() -> None:
    plan = redundant_pool.plan_pool(200, 0.5, num_classes=4, imbalance=10.0, head_classes=2)
    scenes = _scenes(4, 120)
    first, again, other = (redundant_pool.build_samples(scenes, plan, seed=s) for s in (1, 1, 2))
    assert [(s.key, s.image) for s in first] == [(s.key, s.image) for s in again]
    assert [s.image for s in first] != [s.image for s in other]
