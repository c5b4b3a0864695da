"""Seeded pools that resemble a redundant, heavy-tailed archive (issue #33: when does dynamic pruning pay?).

The setting of the paper behind dynamic pruning (Sentinel-1 WV: most of the archive is ocean) has two
properties a CIFAR-10 pool lacks: a large share of the pool repeats a few scenes, and the classes follow a
heavy tail. This module builds such pools from real images:

- **Unique images**: ``n_unique`` distinct source images whose class sizes fall exponentially from the
  first class to the last (``imbalance`` : 1, e.g. 100 : 1).
- **Near copies**: on top of them, ``redundancy`` of the *whole pool* are near copies (a crop of 80-100 % of
  the area, resized back, a shift of up to 3 px (edge repeated), brightness and contrast within 10 %, JPEG quality 60-95) of
  a few source images (``sources_per_class``) of each head class (the ``head_classes`` largest), split
  between the head classes in proportion to their unique counts, the way one ocean scene repeats.

So ``copies = round(redundancy / (1 - redundancy) * n_unique)`` and ``copies / (n_unique + copies)`` is the
asked-for redundancy to within one image. Every sample's truth (is it a copy, of which source) goes into its
shard meta (``planted``: original | near_copy, ``of``: the source key), so curation can be scored on it.
The same seed gives the same bytes.

    SSLPIPE_CIFAR10=... python bench/redundant_pool.py OUT --unique 4000 --redundancy 0.6 --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.planting import shift_image  # noqa: E402
from curation.shards import Sample, write_shards  # noqa: E402


@dataclass(frozen=True)
class PoolPlan:
    """How many images of each kind a pool holds: unique images per class, near copies per head class."""

    unique_per_class: list[int]
    copies_per_class: list[int]
    sources_per_class: int

    @property
    def n_unique(self) -> int:
        return sum(self.unique_per_class)

    @property
    def n_copies(self) -> int:
        return sum(self.copies_per_class)

    @property
    def redundancy(self) -> float:
        return self.n_copies / (self.n_unique + self.n_copies)


def plan_pool(n_unique: int, redundancy: float, num_classes: int = 10, imbalance: float = 100.0,
              head_classes: int = 3, sources_per_class: int = 5) -> PoolPlan:
    """Class sizes of the unique images (exponential tail) and the near copies per head class."""
    if not 0 <= redundancy < 1:
        raise ValueError(f"redundancy must be in [0, 1), got {redundancy}")
    if not 1 <= head_classes <= num_classes:
        raise ValueError(f"head_classes must be in [1, {num_classes}], got {head_classes}")
    decay = imbalance ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    unique = np.maximum(1, np.round(n_unique * decay / decay.sum())).astype(int)
    if unique[:head_classes].min() < sources_per_class:
        raise ValueError(f"each head class needs >= {sources_per_class} unique images; raise n_unique")
    n_copies = int(round(redundancy / (1 - redundancy) * int(unique.sum())))
    head = unique[:head_classes].astype(float)
    copies = np.floor(n_copies * head / head.sum()).astype(int)
    copies[: n_copies - int(copies.sum())] += 1  # the remainder, one each, to the largest classes
    return PoolPlan(unique.tolist(), copies.tolist() + [0] * (num_classes - head_classes), sources_per_class)


def near_copy(pixels: np.ndarray, rng: np.random.Generator) -> bytes:
    """One near copy of an RGB image as JPEG bytes: crop, shift, brightness/contrast, re-encode."""
    h, w = pixels.shape[:2]
    img = Image.fromarray(pixels)
    side = float(np.sqrt(rng.uniform(0.8, 1.0)))
    cw, ch = max(1, int(round(w * side))), max(1, int(round(h * side)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    img = Image.fromarray(shift_image(np.asarray(img), dx, dy))  # the border repeats the edge, not black
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.9, 1.1)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def build_samples(images_per_class: list[np.ndarray], plan: PoolPlan, seed: int) -> list[Sample]:
    """The pool's samples: ``images_per_class[c]`` holds at least ``plan.unique_per_class[c]`` RGB images
    of class c (the first ones are taken); keys are ``c{class}-u{i}`` (unique) and ``c{class}-n{j}``."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    for c, (n_unique, n_copies) in enumerate(zip(plan.unique_per_class, plan.copies_per_class)):
        pool = images_per_class[c]
        if len(pool) < n_unique:
            raise ValueError(f"class {c} has {len(pool)} images, the plan needs {n_unique}")
        order = rng.permutation(len(pool))[:n_unique]
        for i, idx in enumerate(order):
            samples.append(Sample(key=f"c{c}-u{i:06d}", image=_jpeg(pool[idx]), ext="jpg", label=c,
                                  meta={"planted": "original"}))
        for j in range(n_copies):
            src = j % plan.sources_per_class  # the class's first few unique images are the repeated scenes
            samples.append(Sample(key=f"c{c}-n{j:06d}", image=near_copy(pool[order[src]], rng), ext="jpg",
                                  label=c, meta={"planted": "near_copy", "of": f"c{c}-u{src:06d}"}))
    return samples


def load_cifar_classes(root: Path, split: str = "train") -> list[np.ndarray]:
    """CIFAR-10 JPEGs per class (sorted class folders, sorted files)."""
    out = []
    for name in sorted(os.listdir(root / split)):
        files = sorted((root / split / name).iterdir())
        out.append(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the pool: OUT/shards/*.tar and OUT/plan.json")
    parser.add_argument("--unique", type=int, default=4000, help="unique images (before the copies)")
    parser.add_argument("--redundancy", type=float, default=0.6, help="fraction of the pool that are near copies")
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--head-classes", type=int, default=3)
    parser.add_argument("--sources-per-class", type=int, default=5)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(os.environ.get("SSLPIPE_CIFAR10", ""))
    if not (root / "train").is_dir():
        sys.exit("set SSLPIPE_CIFAR10 to the CIFAR-10 image folder (train|test/<class>/*.jpg)")
    plan = plan_pool(args.unique, args.redundancy, imbalance=args.imbalance, head_classes=args.head_classes,
                     sources_per_class=args.sources_per_class)
    samples = build_samples(load_cifar_classes(root), plan, args.seed)
    out = Path(args.out)
    write_shards(samples, out / "shards", args.shard_size)
    facts = {"unique_per_class": plan.unique_per_class, "copies_per_class": plan.copies_per_class,
             "redundancy": round(plan.redundancy, 4), "samples": len(samples), "seed": args.seed}
    (out / "plan.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
