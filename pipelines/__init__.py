"""Enclave's Dagster code location: thin assets over the ``rag`` library (see definitions.py)."""
