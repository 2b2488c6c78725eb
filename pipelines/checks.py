"""Asset checks: a second-pass PII scan of new chunks (blocking) and index/catalog consistency."""


from collections import Counter

import dagster as dg

from pipelines.assets import redacted_chunks, vector_index
from pipelines.resources import EnclaveResource
from rag.policy import load_policy
from rag.redaction import PresidioRedactor

RESCAN_BATCH = 512


@dg.asset_check(asset=redacted_chunks, blocking=True, name="no_residual_pii")
def no_residual_pii(enclave: EnclaveResource) -> dg.AssetCheckResult:
    """Scan chunks not yet checked with the policy's detectors again; any finding blocks embedding.

    Unchecked are the chunks no redacting worker verified (its last pass over exactly the stored
    text found nothing) plus a content-hash sample of verified ones (ENCLAVE_PII_RECHECK_FRACTION,
    default 0.1; 1.0 re-scans all), so the check still catches a worker and the main process
    disagreeing about the policy.

    A finding here means redaction missed something the detector sees in the redacted text (for
    instance a name that only looks like one once its neighbour was replaced). Failing keeps
    those chunks out of the index until a policy fix and re-run.
    """
    catalog = enclave.catalog()
    settings = enclave.settings
    residual: Counter[str] = Counter()
    flagged_chunks = 0
    checked = 0
    redactors: dict[str, PresidioRedactor] = {}
    while rows := catalog.chunks_unchecked_with_policy(RESCAN_BATCH):
        clean: list[int] = []
        by_policy: dict[str, list[tuple[int, str]]] = {}
        for chunk_id, text, policy_name in rows:
            by_policy.setdefault(policy_name, []).append((chunk_id, text))
        for policy_name, items in by_policy.items():
            if policy_name not in redactors:
                redactors[policy_name] = PresidioRedactor(load_policy(policy_name, settings.policies_dir),
                                                          tenant_key=settings.tenant_key.get_secret_value().encode())
            # the batched path, as ingestion ran it
            for (chunk_id, _), findings in zip(items, redactors[policy_name].detect_many([t for _, t in items]),
                                               strict=True):
                if findings:
                    flagged_chunks += 1
                    residual.update(f.entity_type for f in findings)
                else:
                    clean.append(chunk_id)
        checked += len(rows)
        catalog.mark_checked(clean)
        if len(clean) < len(rows):
            break  # flagged chunks stay unchecked; re-running the check would loop on them
    return dg.AssetCheckResult(
        passed=flagged_chunks == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"chunks_checked": checked, "chunks_flagged": flagged_chunks,
                  "residual_by_type": dg.MetadataValue.json(dict(residual))})


@dg.asset_check(asset=vector_index, name="index_matches_catalog")
def index_matches_catalog(enclave: EnclaveResource) -> dg.AssetCheckResult:
    """The vectors in the index are exactly the live, embedded chunks of the catalog."""
    catalog = enclave.catalog()
    index = enclave.index()
    in_catalog = set(catalog.embedded_chunk_ids(index.model_id).tolist())
    in_index = set(index.ids().tolist())
    live = set(catalog.live_chunk_ids().tolist())
    missing, extra = in_catalog - in_index, in_index - in_catalog
    unembedded = live - in_catalog
    return dg.AssetCheckResult(
        passed=not missing and not extra and not unembedded,
        metadata={"index_vectors": len(in_index), "catalog_chunks": len(live), "missing_from_index": len(missing),
                  "stale_in_index": len(extra), "chunks_without_embedding": len(unembedded),
                  "index_version": index.version})
