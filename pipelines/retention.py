"""Retention on a schedule: ``apply_retention_job`` runs :func:`rag.lifecycle.retention.apply_retention` once.

Dagster only schedules it; the rules, the holds and the receipt are the library's. The run's
metadata carries counts and the receipt's audit seq, never a document's text.
"""


from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from pipelines.resources import EnclaveResource


class RetentionConfig(dg.Config):
    rules_file: str = Field(default="", description="Retention rules; retention.yaml in the policies directory "
                                                    "by default.")
    user: str = Field(default="retention-schedule", description="Who the receipt and audit record name.")
    as_of: str = Field(default="", description="ISO time the periods are counted to; the run's start by default.")


@dg.op
def apply_retention_rules(context: dg.OpExecutionContext, config: RetentionConfig,
                          enclave: EnclaveResource) -> dg.Output[None]:
    """Erase or pseudonymise what the rules say is due; held documents are skipped; one receipt per run."""
    from rag.lifecycle.erase import LifecycleStores
    from rag.lifecycle.retention import apply_retention, load_retention

    settings = enclave.settings
    settings.require_secrets()
    rules = load_retention(Path(config.rules_file) if config.rules_file else settings.policies_dir / "retention.yaml")
    now = datetime.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    stores = LifecycleStores.from_settings(settings)
    try:
        receipt = apply_retention(stores, rules, user=config.user, now=now, via="dagster")
    finally:
        stores.close()
    body = receipt["receipt"]
    context.log.info(f"retention: erased {len(body['documents'])} document(s), pseudonymised "
                     f"{len(body['pseudonymised'])}, skipped under hold {len(body['skipped_held'])}")
    if not body["complete"]:
        raise dg.Failure(f"retention receipt at audit seq {receipt['audit']['seq']} is incomplete: a probe found "
                         "erased content still on disk")
    return dg.Output(None, metadata={
        "erased": len(body["documents"]), "pseudonymised": len(body["pseudonymised"]),
        "skipped_held": len(body["skipped_held"]), "rules_sha256": rules.content_hash,
        "receipt_audit_seq": receipt["audit"]["seq"], "receipt_id": body["id"]})


@dg.job(description="Apply the retention rules once, with a receipt sealed in the audit chain.")
def apply_retention_job() -> None:
    apply_retention_rules()


@dg.schedule(job=apply_retention_job, cron_schedule="30 3 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def daily_retention(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=None)
