"""The compliance lifecycle: erasure with a verifiable receipt, legal holds, the keyed subject index,
retention and reversible pseudonymisation.

Each module acts on the catalog, the indexes and the audit log through their public methods;
the CLI (``rag.cli.lifecycle``), the HTTP service and Dagster (``pipelines/``) only call it.
"""
