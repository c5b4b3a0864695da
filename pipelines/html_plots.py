"""What the HTML pages share (the run report, the sweep report, ``sslpipe eval``'s page): figures as
``data:`` URIs so that each page is one self-contained file, tables, one style sheet and the page frame.

matplotlib is imported when a figure is encoded, not here: the command line imports the sweep's
modules to build its parser, and must not pay for matplotlib on every verb.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}tr.best{background:#e6f2e6}
.verdict{font-size:1.1em;padding:.6em;background:#eef5ee;border-left:4px solid #4a4}
.warn{background:#fbeee6;border-left-color:#d60}img{max-width:100%}pre{background:#f7f7f7;padding:.5em;overflow:auto}"""


def png_uri(fig: Figure) -> str:
    """A figure as a PNG ``data:`` URI; the figure is closed (pages draw many, pyplot would keep them all)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_file_uri(data: bytes) -> str:
    """PNG bytes written elsewhere (the evaluation's embedding plot) as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str],
               row_classes: Optional[Sequence[str]] = None) -> str:
    """An HTML table; every cell is escaped. ``row_classes`` gives each row a CSS class ('' for none)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        ("<tr>" if not (row_classes and row_classes[i]) else f'<tr class="{html.escape(row_classes[i])}">')
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
        for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, body: str) -> str:
    """A whole page: the shared style sheet, ``title`` (escaped) and ``body`` (HTML, as given)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")
