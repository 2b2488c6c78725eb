"""Asset checks: a second-pass PII scan of new chunks (blocking) and index/catalog consistency."""


from collections import Counter

import dagster as dg

from pipelines.assets import redacted_chunks, vector_index
from pipelines.resources import EnclaveResource
from rag.errors import PolicyInvalidError
from rag.policy import Policy, load_policy
from rag.redaction import PresidioRedactor

RESCAN_BATCH = 512


def _run_policy_file(context: dg.AssetCheckExecutionContext) -> tuple[str, str, str] | None:
    """(name, content hash, file) of the policy the latest redacted_chunks materialisation used."""
    event = context.instance.get_latest_materialization_event(redacted_chunks.key)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return None
    md = materialization.metadata
    if not all(k in md for k in ("policy", "policy_hash", "policy_file")):
        return None
    return str(md["policy"].value), str(md["policy_hash"].value), str(md["policy_file"].value)


def _policy_for(name: str, run_policy: tuple[str, str, str] | None, enclave: EnclaveResource) -> Policy:
    """The policy chunks were redacted under: the run's own file (which may live outside
    policies_dir) when the name matches and the file is unchanged, else policies_dir/NAME.yaml."""
    if run_policy is not None and run_policy[0] == name:
        policy = load_policy(run_policy[2], enclave.settings.policies_dir)
        if policy.content_hash == run_policy[1]:
            return policy
    return load_policy(name, enclave.settings.policies_dir)


@dg.asset_check(asset=redacted_chunks, blocking=True, name="no_residual_pii")
def no_residual_pii(context: dg.AssetCheckExecutionContext, enclave: EnclaveResource) -> dg.AssetCheckResult:
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
    run_policy = _run_policy_file(context)
    while rows := catalog.chunks_unchecked_with_policy(RESCAN_BATCH):
        clean: list[int] = []
        by_policy: dict[str, list[tuple[int, str]]] = {}
        for chunk_id, text, policy_name in rows:
            by_policy.setdefault(policy_name, []).append((chunk_id, text))
        for policy_name, items in by_policy.items():
            if policy_name not in redactors:
                try:
                    policy = _policy_for(policy_name, run_policy, enclave)
                except PolicyInvalidError as exc:
                    # Unverifiable chunks must not reach the index: fail with the reason, not a crash.
                    return dg.AssetCheckResult(
                        passed=False, severity=dg.AssetCheckSeverity.ERROR,
                        metadata={"chunks_checked": checked, "policy_unavailable": policy_name, "error": str(exc)})
                redactors[policy_name] = PresidioRedactor(policy,
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
