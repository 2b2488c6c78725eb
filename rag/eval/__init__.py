"""Measurement an organisation runs on its own golden sets: retrieval quality, PII leakage, access leaks."""

from rag.errors import EnclaveError


class EvaluationInputError(EnclaveError):
    """A golden-set file (topics, qrels, labels, probes) cannot be read; the message names the file and line."""
