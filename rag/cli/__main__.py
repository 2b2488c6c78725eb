"""``python -m rag.cli``: the ``enclave`` command."""

from rag.cli import run

run()
