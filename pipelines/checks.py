"""Asset checks: an independent residual-PII scan of new chunks (blocking) and index/catalog consistency."""


import dagster as dg

from pipelines.assets import redacted_chunks, vector_index
from pipelines.resources import EnclaveResource
from rag.policy import Policy, load_policy
from rag.residual import ResidualReport, ResidualScanner, check_chunks

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
    """Scan chunks no worker verified with the independent residual detector (rag.residual:
    patterns + vocabulary, no NER); any finding blocks embedding.

    Workers already ran that detector on what they stored and quarantined flagged documents
    (residual_pii); this re-scans the chunks they did not verify plus a content-hash sample of
    those they did (ENCLAVE_PII_RECHECK_FRACTION, default 0.1), so a worker and this process
    disagreeing (policy file, word lists) shows. Failing keeps the flagged chunks out of the index
    until a policy fix and re-run; they stay unchecked, so the check fails again until then.
    """
    catalog = enclave.catalog()
    scanners: dict[str, ResidualScanner] = {}
    run_policy = _run_policy_file(context)

    def scanner_for(policy_name: str) -> ResidualScanner:
        if policy_name not in scanners:
            scanners[policy_name] = ResidualScanner(_policy_for(policy_name, run_policy, enclave))
        return scanners[policy_name]

    report = ResidualReport()
    while rows := catalog.chunks_unchecked_with_policy(RESCAN_BATCH):
        report, clean = check_chunks(rows, scanner_for, report)
        catalog.mark_checked(clean)
        if len(clean) < len(rows):
            break  # flagged chunks stay unchecked; re-running the check would loop on them
    metadata = {"chunks_checked": report.checked, "chunks_flagged": len(report.flagged_chunks),
                "residual_by_type": dg.MetadataValue.json(dict(report.by_type)),
                "detector": "rag.residual (patterns + vocabulary, no NER)"}
    if report.policy_unavailable is not None:
        # Unverifiable chunks must not reach the index: fail with the reason, not a crash.
        metadata |= {"policy_unavailable": report.policy_unavailable, "error": report.error or ""}
    return dg.AssetCheckResult(passed=report.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


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
