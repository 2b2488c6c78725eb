"""``enclave eval retrieval``, ``pii`` and ``access``: measure Enclave on your own golden sets."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, cast

import click

from rag.cli.display import rate, report_out
from rag.cli.options import parse_groups
from rag.config import load_settings

if TYPE_CHECKING:
    from rag.retrieval import Mode


@click.group("eval")
def eval_group() -> None:
    """Measure retrieval quality, PII leakage and access leaks on your own golden sets.

    Each command prints a summary, or its full report as JSON with --json, and writes a
    self-contained HTML page with plots with --html FILE.
    """


@eval_group.command("retrieval")
@click.option("--topics", "topics_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="TREC <top>, <DOC><DOCNO> (CACM), id<TAB>query or JSONL topics.")
@click.option("--qrels", "qrels_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="TREC qrels naming documents by file stem or by path in the source.")
@click.option("--k", default=1000, show_default=True, help="Documents retrieved per topic.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["dense", "bm25", "hybrid"]),
              help="Repeat for several; all three by default.")
@click.option("--user", default="evaluation", show_default=True, help="Who searches (recorded in the audit log).")
@click.option("--groups", callback=parse_groups, default="", help="Comma-separated groups of that user.")
@click.option("--run-out", default=None, type=click.Path(dir_okay=False),
              help="TREC run file (FILE.MODE for each mode when there are several).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write an HTML report.")
def eval_retrieval(topics_file: str, qrels_file: str, k: int, modes: tuple[str, ...], user: str,
                   groups: tuple[str, ...], run_out: str | None, as_json: bool, html_file: str | None) -> None:
    """MAP, P@10, P@30, nDCG@10, recall@100 per mode over the ingested corpus (searches are audited)."""
    from pathlib import Path

    from rag.eval import retrieval as ev
    from rag.eval.report import Section
    from rag.eval.topics import read_qrels, read_topics
    from rag.query import QueryEngine

    topics, qrels = read_topics(Path(topics_file)), read_qrels(Path(qrels_file))
    engine = QueryEngine(load_settings())
    try:
        chosen = cast("tuple[Mode, ...]", modes or ("dense", "bm25", "hybrid"))  # click.Choice checked them
        reports = ev.evaluate_modes(engine, topics, qrels, chosen, k, user, list(groups))
    finally:
        engine.close()
    data = ev.to_json(reports, topics, qrels, k)
    run_files = []
    if run_out:
        for r in reports:
            path = Path(run_out if len(reports) == 1 else f"{run_out}.{r.mode}")
            path.write_text("\n".join(ev.trec_run_lines(r)) + "\n", encoding="utf-8")
            run_files.append(str(path))
        data["run_files"] = run_files

    def sections() -> list[Section]:
        per_topic = [{"topic": q, "mode": r.mode, **m} for r in reports for q, m in sorted(r.per_topic.items())]
        return [Section("Aggregate", rows=[{"mode": r.mode, **r.aggregate} for r in reports],
                        bars={r.mode: r.aggregate for r in reports},
                        note=f"{data['judged_topics']} judged topics of {len(topics)}; {k} documents per topic."),
                Section("Per topic", rows=per_topic)]

    if not report_out(data, as_json, html_file, "Retrieval evaluation", sections):
        return
    click.echo(f"{len(topics)} topics, {data['judged_topics']} with relevant documents")
    if data["judged_topics_without_query"]:
        click.echo(f"{len(data['judged_topics_without_query'])} judged topics have no query in {topics_file}")
    click.echo(f"{'mode':<8}" + "".join(f"{m:>12}" for m in ev.MEASURES))
    for r in reports:
        click.echo(f"{r.mode:<8}" + "".join(f"{r.aggregate[m]:>12.4f}" for m in ev.MEASURES))
    for f in run_files:
        click.echo(f"run written to {f}")


@eval_group.command("pii")
@click.option("--docs", "docs_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory holding the labelled documents.")
@click.option("--labels", "labels_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL: {"file": ..., "entities": [{"type": ..., "value": ...}]} per document.')
@click.option("--policy", default="", help="Redaction policy name or file (default: ENCLAVE_POLICY).")
@click.option("--must", "must_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSON list of entity types that must not survive (default: the policy's types).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report (with leaked values) as JSON.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write an HTML report.")
def eval_pii(docs_dir: str, labels_file: str, policy: str, must_file: str | None, as_json: bool,
             html_file: str | None) -> None:
    """Redact labelled documents exactly as ingestion would (nothing is stored) and count what survives."""
    from pathlib import Path

    from rag.eval.pii import evaluate_pii_files, read_labels, read_must
    from rag.eval.report import Section

    settings = load_settings()
    must = read_must(Path(must_file)) if must_file else None
    data = evaluate_pii_files(Path(docs_dir), read_labels(Path(labels_file)), settings, policy or settings.policy,
                              settings.tenant_key.get_secret_value().encode(), must, must_file or "policy").to_json()
    types, overall = data["types"], data["overall"]

    def sections() -> list[Section]:
        rows = [{"entity": t, **row} for t, row in types.items()]
        recall = {t: row["recall"] for t, row in types.items() if row["must_redact"] and row["recall"] is not None}
        return [Section("Recall of must-redact types", rows=rows, bars={data["policy"]: recall},
                        note=(f"Policy {data['policy']}, {data['documents']} documents, {data['chunks']} chunks. "
                              f"Overall recall {rate(overall['recall'])}, precision {rate(overall['precision'])} "
                              f"({overall['removed_spans']} spans removed).")),
                Section("Removed spans by type", rows=[{"entity": t, "removed": n}
                                                       for t, n in overall["removed_by_type"].items()],
                        bars={"removed": {t: float(n) for t, n in overall["removed_by_type"].items()}}),
                Section("Quarantined (nothing stored)", rows=[{"file": f, "reason": r}
                                                              for f, r in data["quarantined"].items()])]

    if not report_out(data, as_json, html_file, "PII evaluation", sections):
        return
    click.echo(f"policy {data['policy']}: {data['documents']} documents, {data['chunks']} chunks; "
               f"must-redact types from {data['must_redact_from']}")
    click.echo(f"{'entity':<22}{'labelled':>9}{'leaked':>8}{'recall':>8}")
    for t, row in types.items():
        if row["must_redact"]:
            click.echo(f"{t:<22}{row['labelled']:>9}{row['leaked']:>8}{rate(row['recall']):>8}")
    click.echo(f"overall recall {rate(overall['recall'])} ({overall['leaked']} of {overall['labelled']} values leak), "
               f"precision {rate(overall['precision'])} ({overall['removed_spans']} spans removed)")
    uncovered = [t for t, row in types.items() if not row["must_redact"] and not row["in_policy"] and row["leaked"]]
    if uncovered:
        click.echo("labelled types the policy does not list (values surviving): "
                   + ", ".join(f"{t} ({types[t]['leaked']}/{types[t]['labelled']})" for t in uncovered))
    for f, reason in data["quarantined"].items():
        click.echo(f"quarantined, nothing stored: {f} ({reason})")
    if data["missing"]:
        click.echo(f"{len(data['missing'])} labelled files not found under {docs_dir}")
    if data["leaked_values"]:
        click.echo("leaked values are listed only in the --json report")


@eval_group.command("access")
@click.option("--docs", "docs_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The ingested directory: its .access.json files are the oracle.")
@click.option("--source", "source_name", default="", help="Catalog name of that source (default: directory name).")
@click.option("--probes", "probes_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL: {"user": ..., "groups": [...], "question": ...} per probe.')
@click.option("--default-groups", callback=parse_groups, default="",
              help="The --groups ingestion was given, for files without a rule.")
@click.option("--default-public", is_flag=True, help="Ingestion was given --public, for files without a rule.")
@click.option("--no-ask", is_flag=True, help="Check search hits only (no model calls).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write an HTML report.")
def eval_access(docs_dir: str, source_name: str, probes_file: str, default_groups: tuple[str, ...],
                default_public: bool, no_ask: bool, as_json: bool, html_file: str | None) -> None:
    """Probe (user, groups, question) against the ingested DOCS; leaks must be 0 (exit 1 otherwise)."""
    from pathlib import Path

    from connectors.base import AccessRule
    from rag.eval.access import check_access, read_probes, source_documents, source_rules
    from rag.eval.report import Section
    from rag.query import QueryEngine

    if default_public and default_groups:
        raise click.UsageError("give --default-groups or --default-public, not both")
    default = (AccessRule(public=True) if default_public
               else AccessRule(groups=frozenset(default_groups)) if default_groups else None)
    probes, rules = read_probes(Path(probes_file)), source_rules(Path(docs_dir), default)
    engine = QueryEngine(load_settings())
    try:
        documents = source_documents(engine.catalog, source_name or Path(docs_dir).resolve().name)
        report = check_access(engine, probes, rules, documents, ask=not no_ask)
    finally:
        engine.close()
    data = report.to_json()

    def sections() -> list[Section]:
        kinds = {"search hit": data["hits_checked"], "prompt passage": data["prompt_passages_checked"],
                 "citation": data["citations_checked"]}
        leaks = {k: float(sum(1 for x in data["leak_details"] if x["where"] == k)) for k in kinds}
        return [Section("Checked and leaked", rows=[{"kind": k, "checked": n, "leaks": int(leaks[k])}
                                                    for k, n in kinds.items()],
                        bars={"checked": {k: float(n) for k, n in kinds.items()}, "leaks": leaks},
                        note=f"{data['probes']} probes; {data['leaks']} leaks (must be 0); "
                             f"{data['not_judged_other_sources']} items from other sources not judged."),
                Section("Leaks", rows=data["leak_details"])]

    if report_out(data, as_json, html_file, "Access evaluation", sections):
        checked = ("search only (--no-ask)" if no_ask else f"{data['prompt_passages_checked']} prompt passages, "
                                                            f"{data['citations_checked']} citations")
        click.echo(f"{data['probes']} probes, {data['hits_checked']} hits, {checked} checked: {data['leaks']} leaks")
        if data["not_judged_other_sources"]:
            click.echo(f"{data['not_judged_other_sources']} items from other sources of the catalog not judged")
        for leak in data["leak_details"]:
            click.echo(f"  LEAK probe {leak['probe']} ({leak['user']}): {leak['where']} from {leak['uri']} "
                       f"({leak['why']})")
    if data["leaks"]:
        sys.exit(1)
