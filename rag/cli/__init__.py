"""The ``enclave`` command: one module per command group, gathered under :func:`main`.

    ingest, status, chunks    rag.cli.ingest   put documents in, see what the catalog holds
    search, ask, serve        rag.cli.query    the query side (every search and answer audited)
    audit verify|export       rag.cli.audit    the compliance officer's commands
    eval retrieval|pii|access rag.cli.eval     measurements on your own golden sets
    erase [verify], hold      rag.cli.lifecycle erasure with a receipt, legal holds,
    retention apply, reveal                     retention rules applied, audited re-identification
    compliance report                           records of processing, audit evidence
    db upgrade|status         rag.cli.db       schema migrations, run as the schema owner
    token                     rag.cli.token    a signed bearer token, to try the chat page or the API

Every command is a thin shell over the library; an :class:`~rag.errors.EnclaveError` ends the
command with its message and exit status 2.
"""

from __future__ import annotations

import sys

import click

from rag.cli.audit import audit
from rag.cli.db import db
from rag.cli.eval import eval_group
from rag.cli.ingest import chunks, ingest, status
from rag.cli.lifecycle import compliance, erase, hold, retention, reveal
from rag.cli.query import ask, search, serve
from rag.cli.token import token
from rag.config import load_settings, secure_home
from rag.errors import EnclaveError

# Commands that read documents or questions: in production they need the real secrets first.
_NEEDS_SECRETS = frozenset({"ingest", "search", "ask", "serve", "eval", "erase", "retention", "reveal"})


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Enclave: RAG over your own documents, on your own hardware."""
    if ctx.invoked_subcommand in _NEEDS_SECRETS:
        settings = load_settings()
        settings.require_secrets(serving=ctx.invoked_subcommand == "serve")
        secure_home(settings)  # the home 0700, what it holds 0600


for _command in (ingest, status, chunks, search, ask, serve, audit, eval_group, db, erase, hold,
                 retention, reveal, compliance, token):
    main.add_command(_command)


def run() -> None:
    try:
        main(standalone_mode=True)
    except EnclaveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
