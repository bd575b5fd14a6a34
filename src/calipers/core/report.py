"""Reports: ``report.json``, PNG figures and one ``index.html`` in a directory."""
from __future__ import annotations

import html
import json
import os

import numpy as np


def _close(fig) -> None:
    """Release a figure: pyplot-managed figures are closed there, plain ``Figure`` objects
    (what :mod:`calipers.validate.plots` draws) are simply cleared."""
    import sys

    plt = sys.modules.get("matplotlib.pyplot")  # never import pyplot just to close a figure
    if plt is not None:
        plt.close(fig)  # a no-op for a figure pyplot does not manage
    fig.clear()


REPORT_KEYS = ("title", "passed", "checks", "metrics", "figures", "provenance")


def write_report(directory: str, title: str, summary: dict, checks: list, figures: dict,
                 provenance: dict | None = None, extra_html: str = "", extra: dict | None = None) -> str:
    """Write a report directory; ``figures`` maps a file stem to a matplotlib Figure.

    ``extra_html``: HTML sections (e.g. a model card, :func:`calipers.core.model_card.card_html`)
    placed on the page after the figures, as given (the caller escapes its text). ``extra``:
    further JSON-able top-level entries of ``report.json`` (arrays, a model card); they may not
    reuse the names of the standard entries (:data:`REPORT_KEYS`).
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(REPORT_KEYS))
    if clash:
        raise ValueError(f"report entries {clash} are reserved; give the extra entries other names")
    os.makedirs(directory, exist_ok=True)
    passed = all(c.passed for c in checks)
    payload = {"title": title, "passed": passed, "checks": [c.to_dict() for c in checks],
               "metrics": summary, "figures": [f"{k}.png" for k in figures], "provenance": provenance or {}} | extra
    with open(os.path.join(directory, "report.json"), "w") as fh:
        json.dump(payload, fh, indent=2, default=float)
    for stem, fig in figures.items():
        fig.savefig(os.path.join(directory, f"{stem}.png"), dpi=110)
        _close(fig)
    rows = "\n".join(
        f"<tr class='{'ok' if c.passed else 'bad'}'><td>{html.escape(c.name)}</td><td>{c.value:.5g}</td>"
        f"<td>{html.escape(c.describe().split(': needs ')[1].rsplit(' -> ', 1)[0])}</td>"
        f"<td>{'pass' if c.passed else 'FAIL'}</td><td>{html.escape(c.why)}</td></tr>" for c in checks)
    metrics = "\n".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.5g}</td></tr>" if isinstance(v, float)
                        else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in summary.items())
    imgs = "\n".join(f"<img src='{k}.png' alt='{k}'>" for k in figures)
    verdict = "PASSED" if passed else "FAILED"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
.ok{{background:#eaf7ea}} .bad{{background:#fbe3e3}} img{{max-width:32%;margin:4px}}</style></head><body>
<h1>{html.escape(title)}: {verdict}</h1>
<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>rule</th><th>result</th><th>why</th></tr>{rows}</table>
<h2>Figures</h2>{imgs}
{extra_html}
<h2>Metrics</h2><table>{metrics}</table>
</body></html>"""
    with open(os.path.join(directory, "index.html"), "w") as fh:
        fh.write(page)
    return directory


def html_table(rows: list[dict], columns: list[str], caption: str) -> str:
    """An HTML section: ``caption`` as a heading and a table of ``rows`` (dicts) in ``columns``;
    floats to 4 significant digits, None as a dash, every value escaped."""
    def fmt(v):
        if v is None:
            return "&mdash;"
        if isinstance(v, float):
            return "nan" if not np.isfinite(v) else f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<h3>{html.escape(caption)}</h3><table><tr>{head}</tr>{body}</table>"

