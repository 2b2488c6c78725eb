"""Measurement an organisation runs on its own golden sets: retrieval quality, PII leakage, access leaks."""
