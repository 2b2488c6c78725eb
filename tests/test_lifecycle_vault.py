"""Reversible pseudonymisation with real components: the sample corpus ingested under a policy that
pseudonymises names; the vault holds ciphertext only, reveal needs a role and a purpose and is
audited (CLI and HTTP), answers show originals only to the allowed groups, erasure destroys entries."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from lifecycle_home import DISCHARGE, LETTER, SUBJECT
from sqlalchemy import func, select

from connectors.filesystem import FileShareSource
from rag.config import Settings, load_settings
from rag.ingest import IngestionComponents, run_ingestion
from rag.lifecycle.erase import LifecycleStores, erase_subject
from rag.lifecycle.models import VaultEntry
from rag.lifecycle.probes import scan_bytes
from rag.lifecycle.vault import ReidentificationRefusedError, Vault, pseudonym_token
from rag.service.auth import issue_token

VAULT_KEY = "vault-key-for-tests-that-is-long-enough-0123456789"
JWT_KEY = "test-signing-key-that-is-long-enough-for-hs256"
POLICY = """name: pseudonymised
extends: hipaa
description: hipaa, with names pseudonymised reversibly through the vault
entities: [PERSON]
operators:
  PERSON: {type: pseudonymise}
"""
TOKEN = pseudonym_token(b"", "PERSON", SUBJECT)
ORIGINALS = (SUBJECT.encode(), b"Okonkwo", b"Margaret", b"Whitfield")


def _settings(home: Path, policy: Path) -> Settings:
    return load_settings(home=home, parse_workers=1, policy=str(policy), database_url="", audit_database_url="",
                         vault_key=VAULT_KEY, jwt_key=JWT_KEY, reveal_groups="investigators",
                         original_view_groups="clinicians")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vault")
    corpus = root / "corpus"
    shutil.copytree(Path(__file__).parent / "fixtures" / "sample-corpus", corpus)
    (corpus / "oncology" / "clinic-letter.txt").write_text(LETTER)
    shutil.copytree(Path(__file__).resolve().parent.parent / "policies", root / "policies")
    policy = root / "policies" / "pseudonymised.yaml"  # beside the policy it extends
    policy.write_text(POLICY)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_HOME", "ENCLAVE_TENANT_KEY"):
            mp.delenv(name, raising=False)
        components = IngestionComponents(_settings(root / "home", policy))
        try:
            out = run_ingestion(components, FileShareSource(corpus, name="sample"), "filesystem", str(corpus))
            assert out.success, out.failure
        finally:
            components.close()
    return root / "home", policy


@pytest.fixture
def settings(template: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    home = tmp_path / "home"
    shutil.copytree(template[0], home)
    for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_TENANT_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("HOME", str(home)), ("VAULT_KEY", VAULT_KEY), ("REVEAL_GROUPS", "investigators"),
                        ("POLICY", str(template[1]))):
        monkeypatch.setenv(f"ENCLAVE_{name}", value)
    return _settings(home, template[1])


@pytest.fixture
def stores(settings: Settings) -> Iterator[LifecycleStores]:
    built = LifecycleStores.from_settings(settings)
    yield built
    built.close()


def _vault(settings: Settings, stores: LifecycleStores) -> Vault:
    return Vault.from_settings(settings, stores.catalog, stores.audit)


def test_chunks_carry_typed_pseudonyms_and_no_byte_of_the_database_holds_an_original(
        settings: Settings, stores: LifecycleStores) -> None:
    views = stores.catalog.chunk_views(stores.catalog.live_chunk_ids().tolist())
    holding = {v.source_uri for v in views.values() if f"<{TOKEN}>" in v.text}
    assert holding == {DISCHARGE, "oncology/clinic-letter.txt"}  # same person, same token, across documents
    with stores.catalog.session() as s:
        assert (s.scalar(select(func.count()).select_from(VaultEntry)) or 0) >= 2
    assert scan_bytes([settings.home], ORIGINALS).hits == {}  # catalog, WAL, vault, indexes, audit log


def test_reveal_needs_a_role_and_a_purpose_and_every_call_is_audited(settings: Settings,
                                                                     stores: LifecycleStores) -> None:
    vault = _vault(settings, stores)
    with pytest.raises(ReidentificationRefusedError, match="no group allowed"):
        vault.reveal(TOKEN, user="nurse", groups=["oncology"], purpose="curious", via="cli")
    with pytest.raises(ReidentificationRefusedError, match="purpose"):
        vault.reveal(TOKEN, user="inv", groups=["investigators"], purpose="  ", via="cli")
    assert vault.reveal(f"<{TOKEN}>", user="inv", groups=["investigators"], purpose="case 2026-4",
                        via="cli").value == SUBJECT

    from rag.cli import main

    refused = CliRunner().invoke(main, ["reveal", TOKEN, "--purpose", "case 2026-4", "--groups", "oncology",
                                        "--user", "nurse"])
    assert isinstance(refused.exception, ReidentificationRefusedError)  # `enclave` ends it with status 2
    shown = CliRunner().invoke(main, ["reveal", TOKEN, "--purpose", "case 2026-4", "--groups", "investigators",
                                      "--user", "inv"])
    assert shown.exit_code == 0 and shown.output.strip() == SUBJECT

    records = [r for r in stores.audit.records() if r.kind == "reveal"]
    assert [(r.user, r.body["outcome"], r.body["purpose"]) for r in records] == [
        ("nurse", "error", "curious"), ("inv", "error", None), ("inv", "ok", "case 2026-4"),
        ("nurse", "error", "case 2026-4"), ("inv", "ok", "case 2026-4")]
    assert len({r.body["event"]["token_ref"] for r in records}) == 1  # which token, by its keyed reference
    assert scan_bytes([settings.home / "audit.db"], [*ORIGINALS, TOKEN.encode()]).hits == {}


def test_http_reveal_and_per_role_views_show_originals_only_to_allowed_groups(settings: Settings,
                                                                              stores: LifecycleStores) -> None:
    from rag.service.app import create_app

    def auth(user: str, groups: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(settings, user, groups)}"}

    question = {"question": "neuropathy after the second cycle of FOLFOX", "k": 10}
    with TestClient(create_app(settings)) as client:
        denied = client.post("/v1/reveal", json={"token": TOKEN, "purpose": "x"}, headers=auth("nurse", ["oncology"]))
        assert denied.status_code == 403 and denied.json()["error"]["type"] == "forbidden"
        no_purpose = client.post("/v1/reveal", json={"token": TOKEN}, headers=auth("inv", ["investigators"]))
        assert no_purpose.status_code == 422
        ok = client.post("/v1/reveal", json={"token": TOKEN, "purpose": "case 2026-4"},
                         headers=auth("inv", ["investigators"]))
        assert ok.status_code == 200 and ok.json()["value"] == SUBJECT

        nurse = client.post("/v1/search", json=question, headers=auth("nurse", ["oncology"])).json()
        clinician = client.post("/v1/search", json=question, headers=auth("dr", ["oncology", "clinicians"])).json()
    nurse_text = " ".join(h["text"] for h in nurse["hits"])
    clinician_text = " ".join(h["text"] for h in clinician["hits"])
    assert f"<{TOKEN}>" in nurse_text and SUBJECT not in nurse_text
    assert SUBJECT in clinician_text and TOKEN not in clinician_text
    renders = [r for r in stores.audit.records() if r.kind == "reveal" and r.body["event"]["action"] == "render"]
    assert [r.user for r in renders] == ["dr"] and renders[0].body["event"]["rendered"] >= 1
    search_records = [r for r in stores.audit.records() if r.kind == "search"]
    assert [r.user for r in search_records] == ["nurse", "dr"]  # audited before the rendering
    assert renders[0].seq > search_records[1].seq


def test_erasing_the_subject_destroys_its_vault_entries_and_every_byte_of_its_token(
        settings: Settings, stores: LifecycleStores) -> None:
    receipt = erase_subject(stores, SUBJECT, user="dpo", entity_type="PERSON")
    assert receipt["receipt"]["complete"], receipt["receipt"]["probes"]
    assert receipt["receipt"]["counts"]["before"]["vault_entries"] == 1
    assert receipt["receipt"]["counts"]["after"]["vault_entries"] == 0
    assert scan_bytes([settings.home], [TOKEN.encode()]).hits == {}
    out = _vault(settings, stores).reveal(TOKEN, user="inv", groups=["investigators"], purpose="case", via="cli")
    assert out.value is None
    # other people's entries stay
    with stores.catalog.session() as s:
        assert (s.scalar(select(func.count()).select_from(VaultEntry)) or 0) >= 1


def test_the_cli_search_renders_originals_only_for_an_allowed_group(settings: Settings, stores: LifecycleStores,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.cli import main

    monkeypatch.setenv("ENCLAVE_ORIGINAL_VIEW_GROUPS", "clinicians")
    question = "neuropathy after the second cycle of FOLFOX"
    nurse = CliRunner().invoke(main, ["search", question, "--user", "nurse", "--groups", "oncology", "--json"])
    doctor = CliRunner().invoke(main, ["search", question, "--user", "dr", "--groups", "oncology,clinicians",
                                       "--json"])
    assert nurse.exit_code == 0 and doctor.exit_code == 0, nurse.output + doctor.output
    assert f"<{TOKEN}>" in nurse.output and SUBJECT not in nurse.output
    assert SUBJECT in doctor.output and TOKEN not in doctor.output
    assert [r.user for r in stores.audit.records() if r.kind == "reveal"] == ["dr"]


def test_pseudonymisation_refuses_to_run_without_a_vault_key_and_production_refuses_a_weak_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ENCLAVE_VAULT_KEY"):
        Settings(environment="production", tenant_key="t" * 40, vault_key="changeme").require_secrets()
    Settings(environment="production", tenant_key="t" * 40, vault_key=VAULT_KEY).require_secrets()

    for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_HOME", "ENCLAVE_VAULT_KEY"):
        monkeypatch.delenv(name, raising=False)
    shutil.copytree(Path(__file__).resolve().parent.parent / "policies", tmp_path / "policies")
    (tmp_path / "policies" / "pseudonymised.yaml").write_text(POLICY)
    corpus = tmp_path / "corpus"
    shutil.copytree(Path(__file__).parent / "fixtures" / "sample-corpus", corpus)
    settings = load_settings(home=tmp_path / "home", parse_workers=1, database_url="", audit_database_url="",
                             policy=str(tmp_path / "policies" / "pseudonymised.yaml"))
    components = IngestionComponents(settings)
    try:
        out = run_ingestion(components, FileShareSource(corpus, name="sample"), "filesystem", str(corpus))
    finally:
        components.close()
    assert not out.success and "ENCLAVE_VAULT_KEY" in (out.failure or "")
    assert components.catalog.counts().chunks == 0
