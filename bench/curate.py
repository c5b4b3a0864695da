"""Benchmark of the embedding-level curation stages (no Ray).

Runs, on synthetic clustered embeddings (long-tailed mixture of Gaussians on
the sphere plus 5 % planted near-copies), at ``--n`` and ``--n / 10``:

* ``semdedup_kmeans``: spherical k-means (ours: k-means++, explicit 256*k
  subsample, niter=20) + assignment of all points;
* ``semdedup_pass``: the per-cluster greedy cosine pass;
* ``hkmeans``: 3-level hierarchical k-means with resampling;
* ``hkmeans_no_resampling``: the same with ``resampling_steps=0``, so
  ``resampling_s_per_step`` = (hkmeans - hkmeans_no_resampling) / steps is
  what one resampling step (fresh k-means++ fit on the <= r*k resample at
  every level, then every point reassigned) costs;
* ``kmeanspp_one_step``: the k-means++ seeding of one level-1 resampling step
  alone (k = ks[0] seeds on r * ks[0] points), the part a warm restart from
  the old centroids would not pay;
* ``balanced``: water-filling a 50 % target;
* ``faiss_default_kmeans`` / ``faiss_default_hier``: the same clusterings with
  plain ``faiss.Kmeans(d, k)`` defaults (random init, 25 iterations, its own
  silent subsampling) and no resampling, as a reference point.

Each size runs in a fresh subprocess so the peak RSS (``ru_maxrss``) is per
size.  Prints one JSON object, then a table.

    nice -n 10 python bench/curate.py --n 1000000 --dim 128
    python bench/curate.py --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _make_data(n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_modes = 2000
    weights = 1.0 / np.arange(1, n_modes + 1) ** 1.1  # Zipf-like long tail
    weights /= weights.sum()
    centers = rng.standard_normal((n_modes, dim), dtype=np.float32)
    n_copies = n // 20
    n_base = n - n_copies
    modes = rng.choice(n_modes, size=n_base, p=weights)
    x = np.empty((n, dim), dtype=np.float32)
    np.take(centers, modes, axis=0, out=x[:n_base])
    # noise drawn in row chunks (same stream as one big draw), so generating
    # the data does not set the peak RSS the benchmark reports
    for s in range(0, n_base, 65536):
        e = min(s + 65536, n_base)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32)
        noise *= 0.5
        x[s:e] += noise
    src = rng.choice(n_base, size=n_copies, replace=False)
    x[n_base:] = x[src] + 0.01 * rng.standard_normal((n_copies, dim), dtype=np.float32)
    return x, modes


def _single(n: int, dim: int, ks: list[int], k_sem: int, steps: int, r: int, seed: int, mode: str) -> dict:
    import resource

    import faiss
    import numpy as np

    from curation.balanced import balanced_sample
    from curation.hierarchical import hierarchical_kmeans
    from curation.kmeans import fit_kmeans, kmeanspp_init, l2_normalize
    from curation.near_dedup import order_ranks
    from curation.semdedup import semdedup_from_clusters

    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(name, fn):
        # wall seconds are what the goals are about; process CPU seconds are
        # reported too because on a shared 2-core box wall time mostly
        # measures the neighbours
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times[name] = round(time.perf_counter() - t0, 3)
        cpu[name] = round(time.process_time() - c0, 3)
        return out

    x, _ = timed("data", lambda: _make_data(n, dim, seed))
    # partial, not a lambda: nothing keeps a reference to the raw copy once it is normalised and deleted
    xn = timed("normalize", functools.partial(l2_normalize, x))
    del x
    cents, labels = timed(
        "semdedup_kmeans",
        lambda: fit_kmeans(xn, k_sem, spherical=True, niter=20, seed=seed, max_points_per_centroid=256),
    )
    dup = timed(
        "semdedup_pass",
        lambda: semdedup_from_clusters(xn, cents, labels, 0.01, order_ranks(np.arange(n), n), mode=mode),
    )
    hier = timed(
        "hkmeans",
        lambda: hierarchical_kmeans(xn, ks, resampling_steps=steps, r=r, niter=20, seed=seed, spherical=True),
    )
    mask = timed("balanced", lambda: balanced_sample(hier.assignments, n // 2, seed))
    timed(
        "hkmeans_no_resampling",
        lambda: hierarchical_kmeans(xn, ks, resampling_steps=0, r=r, niter=20, seed=seed, spherical=True),
    )
    m = min(n, r * ks[0])
    pool = xn[np.random.default_rng(seed).choice(n, size=m, replace=False)]
    timed("kmeanspp_one_step", lambda: kmeanspp_init(pool, ks[0], np.random.default_rng(seed), spherical=True))

    def faiss_default(y, k):
        km = faiss.Kmeans(y.shape[1], k)  # all defaults, on purpose
        km.train(y)
        _, a = km.index.search(y, 1)
        return km.centroids, a[:, 0]

    timed("faiss_default_kmeans", lambda: faiss_default(xn, k_sem))

    def faiss_hier():
        y = xn
        for k in ks:
            y, _ = faiss_default(np.ascontiguousarray(y), k)

    timed("faiss_default_hier", faiss_hier)
    ours = ["normalize", "semdedup_kmeans", "semdedup_pass", "hkmeans", "balanced"]
    return {
        "n": n,
        "dim": dim,
        "threads": faiss.omp_get_max_threads(),
        "seconds": times,
        "cpu_seconds": cpu,
        "ours_total_s": round(sum(times[s] for s in ours), 3),
        "faiss_default_total_s": round(times["faiss_default_kmeans"] + times["faiss_default_hier"], 3),
        "ours_total_cpu_s": round(sum(cpu[s] for s in ours), 3),
        "faiss_default_total_cpu_s": round(cpu["faiss_default_kmeans"] + cpu["faiss_default_hier"], 3),
        "resampling_s_per_step": round((times["hkmeans"] - times["hkmeans_no_resampling"]) / max(steps, 1), 3),
        "resampling_cpu_s_per_step": round((cpu["hkmeans"] - cpu["hkmeans_no_resampling"]) / max(steps, 1), 3),
        "semdedup_removed": int((dup >= 0).sum()),
        "planted_copies": n // 20,
        "kept_balanced": int(mask.sum()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="n=20000, dim=32, small ks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", type=str, default="1000,100,10")
    ap.add_argument("--k-semdedup", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3, help="resampling steps per level")
    ap.add_argument("--r", type=int, default=20, help="points per cluster per resampling step")
    ap.add_argument("--semdedup-mode", choices=("reference", "kept_only"), default="reference",
                    help="which earlier points SemDeDup compares with (curate.semdedup_mode)")
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.dim, args.ks, args.k_semdedup = 20000, 32, "100,20,5", 100
    ks = [int(k) for k in args.ks.split(",")]

    if args.single:
        print(json.dumps(_single(args.n, args.dim, ks, args.k_semdedup, args.steps, args.r, args.seed,
                                 args.semdedup_mode)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    results = []
    for n in (args.n // 10, args.n):
        cmd = [sys.executable, __file__, "--single", "--n", str(n), "--dim", str(args.dim), "--ks", args.ks,
               "--k-semdedup", str(args.k_semdedup), "--steps", str(args.steps), "--r", str(args.r),
               "--seed", str(args.seed), "--semdedup-mode", args.semdedup_mode]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        res["wall_s"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(res), file=sys.stderr, flush=True)  # progress: one line per size
        results.append(res)
    small, big = results
    report = {
        "config": {"ks": ks, "k_semdedup": args.k_semdedup, "resampling_steps": args.steps, "r": args.r,
                   "threads": args.threads, "eps": 0.01, "semdedup_mode": args.semdedup_mode},
        "runs": results,
        "ratio_ours_big_over_small": round(big["ours_total_s"] / max(small["ours_total_s"], 1e-9), 2),
        "ratio_ours_cpu_big_over_small": round(big["ours_total_cpu_s"] / max(small["ours_total_cpu_s"], 1e-9), 2),
        "ratio_faiss_default_big_over_small": round(
            big["faiss_default_total_s"] / max(small["faiss_default_total_s"], 1e-9), 2),
    }
    print(json.dumps(report, indent=1))
    stages = list(big["seconds"].keys())
    print(f"\n{'stage':24s}{'n=' + str(small['n']):>14s}{'n=' + str(big['n']):>14s}{'ratio':>8s}")
    for s in stages:
        a, b = small["seconds"][s], big["seconds"][s]
        print(f"{s:24s}{a:14.2f}{b:14.2f}{(b / a if a else float('nan')):8.1f}"
              f"   cpu {small['cpu_seconds'][s]:.1f} / {big['cpu_seconds'][s]:.1f}")
    for key in ("ours_total_s", "faiss_default_total_s", "ours_total_cpu_s", "faiss_default_total_cpu_s",
                "resampling_s_per_step", "resampling_cpu_s_per_step", "peak_rss_mb", "semdedup_removed",
                "planted_copies", "kept_balanced", "wall_s"):
        a, b = small[key], big[key]
        ratio = f"{b / a:8.1f}" if isinstance(a, (int, float)) and a else ""
        print(f"{key:24s}{a:14}{b:14}{ratio}")


if __name__ == "__main__":
    main()
