"""``sslpipe sweep``: the command line of a sweep, and the names other code imports.

The sweep itself lives in ``pipelines/sweeps/`` (why it is built as it is: that package's docstring):
``space`` parses and validates the sweep file, ``locations`` says where things are kept, ``trial`` runs one
trial, ``driver`` runs the Tuner, ``results`` writes the table and best config, ``report`` the HTML page.
``python -m pipelines.sweep ...`` is ``sslpipe sweep ...``: the same console and the same one-line errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipelines.console import say
from pipelines.sweeps.driver import run_sweep, trial_cpus
from pipelines.sweeps.locations import check_sweep_locations, experiment_path, storage_root, sweep_dir
from pipelines.sweeps.report import build_sweep_report, format_table, knn_vs_param_plot, learning_curves_plot
from pipelines.sweeps.results import CURVE_KEYS, SweepResult, trial_rows, write_results
from pipelines.sweeps.space import (DOMAIN_KINDS, METRIC_NAMES, RANKABLE_METRICS, REFUSED_METRICS, SCHEDULERS, Domain,
                                    SchedulerSpec, SweepSpec, load_search_space, parse_search_space, trial_config)
from pipelines.sweeps.trial import sweep_trial

__all__ = [
    "CURVE_KEYS", "DOMAIN_KINDS", "METRIC_NAMES", "RANKABLE_METRICS", "REFUSED_METRICS", "SCHEDULERS", "Domain",
    "SchedulerSpec", "SweepResult", "SweepSpec", "add_sweep_parser", "build_sweep_report", "check_sweep_locations",
    "experiment_path", "format_table", "knn_vs_param_plot", "learning_curves_plot", "load_search_space", "main",
    "parse_search_space", "run_sweep", "run_sweep_cli", "storage_root", "sweep_dir", "sweep_trial", "trial_config",
    "trial_cpus", "trial_rows", "write_results",
]


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``sslpipe sweep SWEEP.yaml [key=value ...] [--resume] [--overwrite] [--address ADDR]``."""
    p = subparsers.add_parser(
        "sweep", help="Ray Tune sweep over config keys, ranked by online kNN (ASHA/PBT), resumable",
        description="Searches dotted config keys (grid, choice, uniform, loguniform, randint) from a sweep YAML "
        "(see configs/sweep_demo.yaml). Pool and curation run once; each trial pretrains and reports online kNN "
        "top-1 every epoch. Writes RUN_DIR/sweeps/NAME/{trials.parquet,best_config.yaml,report.html}.")
    p.add_argument("config", help="sweep YAML: base config, overrides, search space, scheduler")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config, e.g. train.epochs=5")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--overwrite", action="store_true", help="delete this sweep's results and start over")
    from pipelines.console import add_verbose_option

    add_verbose_option(p)
    return p


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run the sweep verb; user errors propagate as ConfigError/InputError for the CLI to print."""
    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    spec = load_search_space(args.config, overrides)
    result = run_sweep(spec.base, spec, resume=args.resume, overwrite=args.overwrite)
    say(format_table(spec, result.rows))
    say(f"[sweep] best: {result.best['trial_id']} {spec.metric} {result.best[spec.metric]:.4f}; table {result.table_path}; "
        f"best config {result.best_config_path}; report {result.report_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.sweep ...``, the same as ``sslpipe sweep ...`` (same console, same errors)."""
    from pipelines.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
