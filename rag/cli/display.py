"""How the ``enclave`` commands print: nested counts as an indented table, eval reports as JSON or HTML."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click


def echo_counts(title: str, counts: dict[str, Any]) -> None:
    click.echo(title)
    for key, value in counts.items():
        if isinstance(value, dict):
            click.echo(f"  {key}:")
            if not value:
                click.echo("    (none)")
            for k, v in sorted(value.items()):
                click.echo(f"    {k:<22} {v}")
        else:
            click.echo(f"  {key:<24} {value}")


def report_out(data: dict[str, Any], as_json: bool, html_file: str | None, title: str,
                sections: Callable[[], list[Any]]) -> bool:
    """Write the HTML page when asked; print the JSON report when asked. True when the summary is still to print."""
    if html_file:
        from pathlib import Path

        from rag.eval.report import write_html

        write_html(Path(html_file), title, sections())
    if as_json:
        click.echo(json.dumps(data, indent=2))
    return not as_json


def rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
