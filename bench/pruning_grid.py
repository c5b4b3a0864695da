"""When does dynamic pruning pay? Strategies x redundancy x step budget x seed, run with ``sslpipe sweep``.

Issue #33. For each redundancy level this builds a seeded pool with ``bench/redundant_pool.py`` (near
copies of a few scenes per head class on top of a 100 : 1 class tail, the setting of the Earth-observation
paper behind dynamic pruning) at a fixed pool size, then runs two sweeps with the product's own tool:

- ``full``: the pool as it is (curation off) x ``dynamic.policy`` in {none, random, cluster_balance,
  loss_based} x ``train.max_steps`` in {budget, 0.6 budget} x ``seed`` in the seeds. ``none`` is the full
  pool; ``random`` re-draws a random keep_fraction each round (the same subset size as the two rules, no rule).
- ``static``: curated once (exact + near dedup, then cluster balancing to ``--static-keep``) x steps x seeds.

Every trial is scored by the online monitor at its last epoch on the untouched CIFAR-10 test set (all
10,000 queries; k=200, T=0.1) against a balanced bank of CIFAR-10 train images that are in no pool:
``knn_top1`` overall and ``knn_tail_top1`` (mean per-class accuracy over the three rarest classes). The
sweeps' ``trials.parquet`` hold every figure; this script joins them into one table, a JSON and a plot
(kNN overall and tail against redundancy, one line per strategy, error bars over the seeds).

    SSLPIPE_CIFAR10=... python bench/pruning_grid.py --workdir W            # build, sweep (resumable), report
    SSLPIPE_CIFAR10=... python bench/pruning_grid.py --workdir W --report   # the table and plot only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.redundant_pool import build_samples, load_cifar_classes, plan_pool  # noqa: E402
from curation.shards import write_shards  # noqa: E402

POLICIES = ("none", "random", "cluster_balance", "loss_based")
#: the strategies in the table, in order: the full pool, then the subsets
STRATEGIES = ("full", "random", "static", "cluster_balance", "loss_based")
TAIL_CLASSES = [7, 8, 9]  # redundant_pool's tail: class sizes fall with the class index


def build_pool(root: Path, classes: list[np.ndarray], out: Path, redundancy: float, pool_size: int, bank: int,
               seed: int) -> dict[str, Any]:
    """A pool of ``pool_size`` images of which ``redundancy`` are near copies; the first ``bank`` images of
    each class are held back for the kNN bank, so no bank image is in a pool."""
    plan_file = out / "plan.json"
    if plan_file.exists():
        return json.loads(plan_file.read_text())
    plan = plan_pool(int(round((1 - redundancy) * pool_size)), redundancy)
    samples = build_samples([c[bank:] for c in classes], plan, seed)
    write_shards(samples, out / "shards", 1000)
    facts = {"redundancy": round(plan.redundancy, 4), "samples": len(samples), "unique": plan.n_unique,
             "unique_per_class": plan.unique_per_class, "copies_per_class": plan.copies_per_class, "seed": seed}
    plan_file.write_text(json.dumps(facts, indent=1))
    return facts


def build_bank(root: Path, classes: list[np.ndarray], out: Path, bank: int) -> Path:
    """``bank`` images per class as an image folder (root/<class>/*.png) named like CIFAR's, so its labels
    are the queries' and the pool's: balanced, so kNN on the tail is judged with as many neighbours of
    each class as of the head."""
    done = out / ".done"
    if not done.exists():
        for name, images in zip(sorted(os.listdir(root / "train")), classes):
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(images[:bank]):
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
        done.write_text("ok")
    return out


def base_config(args: argparse.Namespace, run_dir: Path, source: Path, bank: Path, queries: Path,
                static: bool) -> dict[str, Any]:
    """The run config every trial starts from (32 px CIFAR, the demo's small conv net and SimCLR head)."""
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir), "seed": 0,
        "data": {"source": str(source), "image_size": 32, "channels": 3, "cache": "memory"},
        "backbone": {"name": "convnet_small", "width": args.width},
        "method": {"name": "simclr", "temperature": 0.2, "proj_hidden_dim": 256, "proj_dim": 64},
        "augment": {"flip_prob": 0.5, "grayscale_prob": 0.2, "crop_scale_min": 0.2},
        "train": {"num_workers": 0, "cpus_per_worker": 1.0, "batch_size": args.batch, "epochs": 1000,
                  # the monitor scores the last epoch only (and every 1000th): the figure of the encoder trained
                  "max_steps": args.steps, "warmup_epochs": 1, "knn_monitor_every": 1000,
                  "knn_monitor_bank": 10 * args.bank, "knn_monitor_queries": 10000, "monitor_pool_samples": 0,
                  "checkpoint_every_epochs": 1000, "time_budget_s": 0},
        "dynamic": {"warmup_epochs": 1, "every_epochs": 1, "keep_fraction": args.keep},
        "curate": {"exact_dedup": static, "near_dedup": static, "embedder": "random_convnet" if static else "none",
                   "balance_fraction": args.static_keep if static else 1.0},
        "eval": {"bank_source": str(bank), "query_source": str(queries), "knn_k": 200, "knn_temperature": 0.1,
                 "tail_classes": TAIL_CLASSES, "linear_probe": False, "few_shot_tries": 0, "robustness": False,
                 "embedding_plot": False},
    }
    return cfg


def sweep_file(args: argparse.Namespace, folder: Path, name: str, cfg: dict[str, Any], static: bool) -> Path:
    budgets = [args.steps, int(round(args.short * args.steps))]
    search: dict[str, Any] = {"train.max_steps": {"grid": budgets}, "seed": {"grid": args.seeds}}
    if not static:
        search["dynamic.policy"] = {"grid": list(POLICIES)}
    spec = {"config": cfg, "search": search, "scheduler": {"name": "fifo"}, "metric": "knn_top1",
            "num_samples": 1, "max_concurrent": args.concurrent, "name": name}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_sweep(path: Path, log: Path) -> None:
    """``sslpipe sweep FILE --resume``: a finished sweep is read back, an interrupted one continues."""
    sweep_dir = Path(yaml.safe_load(path.read_text())["config"]["run_dir"]) / "sweeps" / path.stem
    if (sweep_dir / "trials.parquet").exists():
        return
    cmd = [sys.executable, "-m", "pipelines.cli", "sweep", str(path)]
    if (sweep_dir / "tune").exists():
        cmd.append("--resume")
    with log.open("a") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


def trial_rows(work: Path, levels: list[float]) -> list[dict[str, Any]]:
    """Every trial of every sweep as one flat row: redundancy, strategy, budget, seed and the figures."""
    import pyarrow.parquet as pq

    rows = []
    for r in levels:
        for kind in ("full", "static"):
            table = work / f"runs/r{round(100 * r)}_{kind}/sweeps/{kind}/trials.parquet"
            if not table.exists():
                continue
            for t in pq.read_table(table).to_pylist():
                strategy = "static" if kind == "static" else {"none": "full"}.get(t["dynamic.policy"],
                                                                                   t["dynamic.policy"])
                rows.append({"redundancy": r, "strategy": strategy, "max_steps": int(t["train.max_steps"]),
                             "seed": int(t["seed"]), "knn_top1": t["knn_top1"], "knn_tail_top1": t["knn_tail_top1"],
                             "steps": t["steps"], "train_seconds": t["train_seconds"],
                             "reembed_seconds": t["reembed_seconds"], "select_seconds": t["select_seconds"],
                             "status": t["status"]})
    return rows


def summarise(rows: list[dict[str, Any]], full_steps: int) -> list[dict[str, Any]]:
    """Mean and spread (half the range of the seeds) per (redundancy, strategy, budget)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["redundancy"], row["strategy"], row["max_steps"]), []).append(row)
    out = []
    for (r, strategy, steps), g in sorted(groups.items(), key=lambda kv: (kv[0][0], STRATEGIES.index(kv[0][1]),
                                                                           -kv[0][2])):
        entry: dict[str, Any] = {"redundancy": r, "strategy": strategy, "budget": round(steps / full_steps, 2),
                                 "seeds": len(g)}
        for key in ("knn_top1", "knn_tail_top1", "train_seconds", "reembed_seconds", "select_seconds"):
            v = np.array([x[key] for x in g], dtype=float)
            entry[key] = float(v.mean())
            entry[key + "_spread"] = float((v.max() - v.min()) / 2)
            entry[key + "_var"] = float(v.var(ddof=1)) if len(v) > 1 else 0.0
        out.append(entry)
    return out


def noise_threshold(summary: list[dict[str, Any]], metric: str) -> float:
    """Twice the standard deviation of a difference of two cells' seed means, from the seed variance pooled
    over every cell: with two seeds a cell's own half-range is too crude (it can be 0.00 by chance)."""
    sd_run = float(np.sqrt(np.mean([s[metric + "_var"] for s in summary])))
    seeds = min(s["seeds"] for s in summary)
    return 2 * sd_run * float(np.sqrt(2 / max(seeds, 1)))


def verdicts(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's questions, answered from the cell means against the pooled seed noise: ``a`` matches
    ``b`` when ``a >= b - threshold`` and beats it when ``a - b > threshold``."""
    at = {(s["redundancy"], s["strategy"], s["budget"]): s for s in summary}
    levels = sorted({s["redundancy"] for s in summary})
    out: dict[str, Any] = {}
    for metric in ("knn_top1", "knn_tail_top1"):
        noise = noise_threshold(summary, metric)
        out[f"noise threshold on {metric}"] = round(noise, 4)

        def beats(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str = metric,
                  noise: float = noise) -> bool:
            return bool(a and b and a[metric] - b[metric] > noise)

        for policy in ("cluster_balance", "loss_based"):
            first = None
            for r in levels:
                dyn, full = at.get((r, policy, 0.6)), at.get((r, "full", 1.0))
                if dyn and full and dyn[metric] >= full[metric] - noise:
                    first = r
                    break
            out[f"{policy}@0.6x matches full@1x on {metric} from redundancy"] = first
        for budget in (1.0, 0.6):
            out[f"dynamic beats static beyond the noise on {metric} at {budget}x"] = [
                f"{policy}@{r}" for r in levels for policy in ("cluster_balance", "loss_based")
                if beats(at.get((r, policy, budget)), at.get((r, "static", budget)))]
        for budget in (1.0, 0.6):  # does pruning add anything over the same steps on the whole pool?
            out[f"pruning beats the full pool at the same steps beyond the noise on {metric} at {budget}x"] = [
                f"{policy}@{r}" for r in levels for policy in ("random", "cluster_balance", "loss_based")
                if beats(at.get((r, policy, budget)), at.get((r, "full", budget)))]
        out[f"below full@1x beyond the noise on {metric}"] = [
            f"{s['strategy']}@{s['budget']}x@{s['redundancy']}" for s in summary
            if beats(at.get((s["redundancy"], "full", 1.0)), s)]
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, budget in enumerate((1.0, 0.6)):
        for row, metric in enumerate(("knn_top1", "knn_tail_top1")):
            ax = axes[row][col]
            for strategy in STRATEGIES:
                pts = [s for s in summary if s["strategy"] == strategy and s["budget"] == budget]
                if not pts:
                    continue
                ax.errorbar([100 * s["redundancy"] for s in pts], [100 * s[metric] for s in pts],
                            yerr=[100 * s[metric + "_spread"] for s in pts], marker="o", capsize=3, label=strategy)
            full = [s for s in summary if s["strategy"] == "full" and s["budget"] == 1.0]
            if budget != 1.0 and full:
                ax.plot([100 * s["redundancy"] for s in full], [100 * s[metric] for s in full], "k--", lw=1,
                        label="full pool at 1x")
            ax.set_title(f"{'overall' if metric == 'knn_top1' else 'tail classes'}, {budget}x steps")
            ax.set_ylabel("kNN top-1 (%)")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("near copies in the pool (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Dynamic pruning vs full pool, random and static curation (error bars: seed range / 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| redundancy | strategy | steps | kNN overall | kNN tail | train s | re-embed s | select s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {100 * s['redundancy']:.0f} % | {s['strategy']} | {s['budget']}x | "
                     f"{100 * s['knn_top1']:.2f} ± {100 * s['knn_top1_spread']:.2f} | "
                     f"{100 * s['knn_tail_top1']:.2f} ± {100 * s['knn_tail_top1_spread']:.2f} | "
                     f"{s['train_seconds']:.0f} | {s['reembed_seconds']:.1f} | {s['select_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="pools, bank, sweeps and results (resumable)")
    parser.add_argument("--levels", default="0.3,0.6,0.9", help="fractions of the pool that are near copies")
    parser.add_argument("--pool", type=int, default=8000, help="images per pool (the same at every level)")
    parser.add_argument("--bank", type=int, default=200, help="kNN bank images per class (held out of the pools)")
    parser.add_argument("--steps", type=int, default=400, help="the 1x optimizer-step budget")
    parser.add_argument("--short", type=float, default=0.6, help="the short budget, as a fraction of --steps")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--keep", type=float, default=0.5, help="dynamic.keep_fraction (random and the rules)")
    parser.add_argument("--static-keep", type=float, default=0.5, help="curate.balance_fraction of static curation")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (one CPU each)")
    parser.add_argument("--report", action="store_true", help="only the table and plot from finished sweeps")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    levels = [float(v) for v in args.levels.split(",")]
    root = Path(os.environ.get("SSLPIPE_CIFAR10", ""))
    if not (root / "train").is_dir():
        sys.exit("set SSLPIPE_CIFAR10 to the CIFAR-10 image folder (train|test/<class>/*.jpg)")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.report:
        classes = load_cifar_classes(root)
        bank = build_bank(root, classes, work / "bank", args.bank)
        for r in levels:
            facts = build_pool(root, classes, work / f"pools/r{round(100 * r)}", r, args.pool, args.bank, seed=0)
            print(f"[grid] pool at {100 * r:.0f} %: {facts['samples']} images, {facts['unique']} unique, "
                  f"planted redundancy {facts['redundancy']}", flush=True)
            for kind in ("full", "static"):
                static = kind == "static"
                cfg = base_config(args, work / f"runs/r{round(100 * r)}_{kind}", work / f"pools/r{round(100 * r)}/shards",
                                  bank, root / "test", static)
                path = sweep_file(args, work / f"runs/r{round(100 * r)}_{kind}", kind, cfg, static)
                print(f"[grid] sweep {path} ({time.time() - t0:.0f}s so far)", flush=True)
                run_sweep(path, work / "sweeps.log")
    rows = trial_rows(work, levels)
    summary = summarise(rows, args.steps)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "args": {k: v for k, v in vars(args).items()}, "levels": levels, "trials": rows, "summary": summary,
              "verdicts": verdicts(summary), "seconds": time.time() - t0}
    (work / "pruning_grid.json").write_text(json.dumps(result, indent=1))
    plot(summary, work / "pruning_grid.png")
    print(table(summary))
    print(json.dumps(result["verdicts"], indent=1))
    print(f"[grid] {len(rows)} trials; {work / 'pruning_grid.json'}, {work / 'pruning_grid.png'}")


if __name__ == "__main__":
    main()
