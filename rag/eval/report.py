"""Self-contained HTML reports: tables and matplotlib plots embedded as data URIs (no network, no JS)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Section:
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    bars: dict[str, dict[str, float]] | None = None  # series name → {label: value}
    note: str = ""


def _bar_png(series: dict[str, dict[str, float]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted({k for s in series.values() for k in s})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) * max(1, len(series))), 3.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, [values.get(lbl, 0.0) for lbl in labels], width, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2, labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>nothing to show</em></p>"
    cols = list(rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def write_html(path: Path, title: str, sections: Sequence[Section]) -> None:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.note:
            parts.append(f"<p>{html.escape(s.note)}</p>")
        if s.bars and any(s.bars.values()):
            parts.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{_bar_png(s.bars, s.title)}">')
        parts.append(_table(s.rows))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}")
    Path(path).write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                          f"<style>{style}</style></head><body>{''.join(parts)}</body></html>", encoding="utf-8")
