"""The sweep's HTML page (ranking metric against the searched key, learning curves, the trial table) and
the text table the command line prints."""

from __future__ import annotations

import html
import json
from typing import Any, Optional

from pipelines.html_plots import html_page, html_table, png_uri
from pipelines.sweeps.space import METRIC_NAMES, SweepSpec


def finite(value: Any) -> bool:
    """A number that is not NaN (trials without a value are NaN in the table)."""
    return isinstance(value, (int, float)) and value == value


def _x_key(spec: SweepSpec) -> Optional[str]:
    """The key kNN is plotted against: the temperature when searched, else the first numeric key."""
    numeric = [k for k, d in spec.search.items() if d.numeric()]
    return "method.temperature" if "method.temperature" in numeric else (numeric[0] if numeric else None)


def knn_vs_param_plot(spec: SweepSpec, rows: list[dict[str, Any]]) -> Optional[str]:
    """The final ranking metric against the temperature (or first numeric key), one line per value of another key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = _x_key(spec)
    if x_key is None:
        return None
    others = [k for k in spec.search if k != x_key and spec.search[k].kind in ("grid", "choice")]
    group_key = others[0] if len(others) == 1 else None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] != "error":
            groups.setdefault(r[group_key] if group_key else None, []).append(r)
    for value, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        members.sort(key=lambda r: r[x_key])
        label = f"{group_key}={value}" if group_key else f"final {spec.metric}"
        line = ax.plot([r[x_key] for r in members], [r[spec.metric] for r in members], marker="o", label=label)[0]
        stopped = [r for r in members if r["status"] == "stopped_early"]
        ax.scatter([r[x_key] for r in stopped], [r[spec.metric] for r in stopped], marker="x", s=60,
                   color=line.get_color(), zorder=3)
    if spec.search[x_key].kind == "loguniform" or x_key in ("method.temperature", "train.lr"):
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{METRIC_NAMES[spec.metric]} (last epoch run)")
    ax.set_title(f"{spec.metric} vs {x_key} (x = stopped early by the scheduler)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_uri(fig)


def learning_curves_plot(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The ranking metric per epoch for every trial; dashed = stopped early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for r in rows:
        curve = [c for c in json.loads(r["curve"]) if finite(c.get(spec.metric))]
        if not curve:
            continue
        label = ", ".join(f"{k.split('.')[-1]}={fmt(r[k])}" for k in spec.search)
        ax.plot([c["epoch"] for c in curve], [c[spec.metric] for c in curve], marker=".",
                linestyle="--" if r["status"] == "stopped_early" else "-", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_NAMES[spec.metric])
    ax.set_title("Learning curves per trial (dashed = stopped early)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return png_uri(fig)


def fmt(value: Any) -> str:
    """A cell of the tables: floats to four significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_sweep_report(spec: SweepSpec, rows: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """The sweep's HTML page: best trial, the table, kNN vs temperature and the learning curves."""
    cols = ["trial_id", "status", *spec.search, spec.metric, f"{spec.metric}_best", "epochs", "loss_last", "starts"]
    table = html_table([[fmt(r[c]) for c in cols] for r in rows], cols,
                       row_classes=["best" if r is best else "" for r in rows])
    plots = [p for p in (knn_vs_param_plot(spec, rows), learning_curves_plot(spec, rows)) if p]
    imgs = "".join(f'<p><img src="{p}" alt="sweep plot"></p>' for p in plots)
    sched = spec.scheduler
    name = METRIC_NAMES[spec.metric]
    basis = ("held-out images of the labelled evaluation set" if spec.metric == "knn_top1"
             else "a fixed random sample of the curated pool, no labels needed")
    body = f"""<h1>Sweep <code>{html.escape(spec.name)}</code></h1>
<p>Trials are ranked by <b>{name}</b> ({"higher" if spec.mode == "max" else "lower"} is better) after each epoch
({basis}; never by the SSL loss, which is not comparable across temperatures). Scheduler: <b>{html.escape(sched.name)}</b>
(grace period {sched.grace_period}, reduction factor {sched.reduction_factor:g}, max {sched.max_t} epochs).</p>
<p>Best: trial <code>{html.escape(str(best['trial_id']))}</code>, {name} {best[spec.metric]:.4f} with
{html.escape(', '.join(f'{k} = {fmt(best[k])}' for k in spec.search))}. Its full config is in
<code>best_config.yaml</code> (run it with <code>sslpipe run best_config.yaml</code>).</p>
{table}
{imgs}
"""
    return html_page(f"sslpipe sweep {spec.name}", body) + "\n"


def format_table(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the trials, best first."""
    cols = ["trial_id", "status", *spec.search, spec.metric, "epochs"]
    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
