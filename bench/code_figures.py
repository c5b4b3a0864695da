"""The small measurements behind design choices in code comments, each with its command.

Code says what it does and why; the figures that justify a choice live in docs/BENCHMARKS.md, and
this script reproduces them (each in seconds to a minute on 2 cores; JSON, then a table):

* ``phash``: Hamming distance of the plain 64-bit pHash under JPEG q=75, bilinear resizes and 1-2 px
  shifts on 300 real MNIST digits, against unrelated digits' nearest neighbour; and of the
  shift-tolerant variant under the same shifts (curation/phash.py).
* ``kmeanspp_threads``: CPU seconds of k-means++ seeding (m points, k centres) with BLAS held to one
  thread against two (curation/kmeans.py runs it single-threaded).
* ``binary_search``: the near-duplicate bucket join against faiss' ``IndexBinaryMultiHash`` range
  search on N random 64-bit hashes, radius t (curation/near_dedup.py).
* ``random_init_knn``: DINO-protocol kNN of an untrained ResNet-18 and an untrained ``convnet_small``
  on 28 px MNIST digits (why the demo uses the small net: ssl_models/backbones.py).

    python bench/code_figures.py phash
    python bench/code_figures.py kmeanspp_threads --m 32000 --k 1000
    python bench/code_figures.py binary_search --n 200000
    python bench/code_figures.py random_init_knn
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from pipelines.sources import load_mnist_digits

    return load_mnist_digits()


def _stats(d: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(d)), "p95": float(np.percentile(d, 95)), "max": float(d.max()),
            "p1": float(np.percentile(d, 1))}


def phash(args: argparse.Namespace) -> dict:
    from PIL import Image

    from curation.phash import hamming, min_shift_hamming, phash_batch, phash_shifts

    images, _ = _digits()
    rng = np.random.default_rng(0)
    picked = images[rng.choice(len(images), args.copies, replace=False)]

    def jpeg(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=75)
        return np.array(Image.open(buf))

    def resize(a: np.ndarray, s: int) -> np.ndarray:
        return np.array(Image.fromarray(a).resize((s, s), Image.BILINEAR).resize((28, 28), Image.BILINEAR))

    def shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return np.roll(np.roll(a, dy, 0), dx, 1) * _inside(a.shape, dy, dx)

    base = phash_batch(picked.astype(np.float32))
    edits = {"jpeg_q75": jpeg, "resize_25": lambda a: resize(a, 25), "resize_32": lambda a: resize(a, 32),
             "shift_1px": lambda a: shift(a, 0, 1), "shift_2_-1px": lambda a: shift(a, 2, -1)}
    out: dict = {"copies": args.copies, "plain_hash_bits": {}}
    for name, edit in edits.items():
        edited = np.stack([edit(a) for a in picked]).astype(np.float32)
        out["plain_hash_bits"][name] = _stats(hamming(base, phash_batch(edited)))
    everything = phash_batch(images.astype(np.float32))
    d = hamming(base[:, None], everything[None, :]).astype(np.float64)
    d[d == 0] = np.inf  # the digit itself (and exact copies)
    out["plain_hash_bits"]["unrelated_nearest_neighbour"] = _stats(d.min(1))
    out["plain_hash_bits"]["random_pairs"] = _stats(hamming(everything[:2000], everything[2000:4000]))
    shifts = phash_shifts(picked.astype(np.float32), 2)
    out["shift_tolerant_bits"] = {}
    for name in ("shift_1px", "shift_2_-1px"):
        moved = np.stack([edits[name](a) for a in picked]).astype(np.float32)
        out["shift_tolerant_bits"][name] = _stats(min_shift_hamming(shifts, phash_shifts(moved, 2)[:, 0]))
    return out


def _inside(shape: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    """1 where a shift by (dy, dx) with zero fill keeps a pixel, 0 where it brings in padding."""
    keep = np.zeros(shape, dtype=np.uint8)
    h, w = shape
    keep[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = 1
    return keep


def kmeanspp_threads(args: argparse.Namespace) -> dict:
    from curation.kmeans import _kmeanspp, blas_threads, l2_normalize

    x = l2_normalize(np.random.default_rng(0).standard_normal((args.m, args.d), dtype=np.float32))
    out = {"m": args.m, "k": args.k, "d": args.d, "cpu_seconds": {}, "wall_seconds": {}}
    for threads in (1, 2):
        with blas_threads(threads):
            c0, t0 = time.process_time(), time.perf_counter()
            _kmeanspp(x, args.k, np.random.default_rng(1), True)
            out["cpu_seconds"][threads] = round(time.process_time() - c0, 2)
            out["wall_seconds"][threads] = round(time.perf_counter() - t0, 2)
    out["cpu_ratio_2_over_1"] = round(out["cpu_seconds"][2] / out["cpu_seconds"][1], 2)
    return out


def binary_search(args: argparse.Namespace) -> dict:
    import faiss

    from curation.near_dedup import find_near_duplicates

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, args.n, dtype=np.uint64) ^ rng.integers(0, 2, args.n, dtype=np.uint64) << 63
    faiss.omp_set_num_threads(1)  # both single-threaded; CPU seconds, which a busy machine does not inflate
    c0 = time.process_time()
    find_near_duplicates(hashes, np.arange(args.n), args.t)
    ours = time.process_time() - c0
    codes = hashes.view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryMultiHash(64, args.t + 1, 64 // (args.t + 1))
    index.add(codes)
    c0 = time.process_time()
    index.range_search(codes, args.t + 1)
    theirs = time.process_time() - c0
    return {"n": args.n, "radius": args.t, "bucket_join_cpu_s": round(ours, 2),
            "faiss_multihash_cpu_s": round(theirs, 2), "faiss_us_per_query": round(1e6 * theirs / args.n, 1),
            "ratio_faiss_over_ours": round(theirs / ours, 1)}


def random_init_knn(args: argparse.Namespace) -> dict:
    import torch

    from pipelines.evaluation.knn import DINO, knn_accuracy
    from ssl_models.backbones import build_backbone

    images, labels = _digits()
    x = (torch.from_numpy(images[:, None].astype(np.float32)) / 255.0 - 0.5) / 0.5
    out = {}
    for name, kw in (("resnet18", {"cifar_stem": True}), ("convnet_small", {"width": 32})):
        torch.manual_seed(0)
        net, _ = build_backbone(name, in_channels=1, **kw)
        net.eval()
        with torch.no_grad():
            feats = torch.cat([net(x[s : s + 250]) for s in range(0, len(x), 250)]).numpy()
        out[name] = round(knn_accuracy(feats[:4000], labels[:4000], feats[4000:], labels[4000:], DINO), 4)
    return {"protocol": DINO.name, "bank": 4000, "queries": len(images) - 4000, "knn_top1_untrained": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("phash")
    p.add_argument("--copies", type=int, default=300)
    p = sub.add_parser("kmeanspp_threads")
    p.add_argument("--m", type=int, default=32000)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--d", type=int, default=128)
    p = sub.add_parser("binary_search")
    p.add_argument("--n", type=int, default=200000)
    p.add_argument("--t", type=int, default=4)
    sub.add_parser("random_init_knn")
    args = parser.parse_args()
    result = {"phash": phash, "kmeanspp_threads": kmeanspp_threads, "binary_search": binary_search,
              "random_init_knn": random_init_knn}[args.what](args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
