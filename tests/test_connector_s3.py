"""The s3 connector against a real S3-compatible server (moto's standalone server) on loopback."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from source_runs import ingest_once, stored

from connectors.base import AccessRule, ConnectorError, DocumentGoneError, InvalidAccessRuleError, connector_for
from connectors.s3 import ObjectStoreSource, S3Settings
from rag.catalog.store import CatalogStore
from rag.errors import AccessRuleMissingError

KEY_ID, SECRET = "enclave-test-key", "s3cret-" + uuid.uuid4().hex

LETTERS = {
    "letters/2026/clinic-a.txt": "Clinic letter. Blood pressure controlled on amlodipine; review in three months.",
    "letters/2026/cardio/echo.txt": "Echocardiogram report. Mild mitral regurgitation; left ventricle normal size.",
    "letters/2026/readme.md": "# Letters\n\nScanned outgoing letters of the outpatient clinics.",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class Bucket:
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.name = f"enclave-{uuid.uuid4().hex[:12]}"
        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        self.client.create_bucket(Bucket=self.name)

    def put(self, key: str, body: str | bytes, tags: str | None = None) -> None:
        extra: dict[str, Any] = {"Tagging": tags} if tags else {}
        self.client.put_object(Bucket=self.name, Key=key, Body=body.encode() if isinstance(body, str) else body,
                               **extra)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "bucket": self.name, "prefix": "letters/2026",
                "access_key_id": KEY_ID, "secret_access_key": SECRET, **overrides}


@pytest.fixture
def bucket(s3_endpoint: str) -> Bucket:
    b = Bucket(s3_endpoint)
    for key, text in LETTERS.items():
        b.put(key, text)
    b.put("letters/2026/.access.json", json.dumps({"groups": ["outpatients"]}))
    b.put("letters/2026/cardio/.access.json", json.dumps({"groups": ["cardiology"]}))
    b.put("letters/2026/.drafts/unsent.txt", "Hidden draft.")
    b.put("letters/2026/empty-folder/", b"")
    b.put("letters/2025/old.txt", "Outside the prefix.")
    return b


def source(bucket: Bucket, tmp_path: Path, default: AccessRule | None = None, **overrides: Any) -> ObjectStoreSource:
    return ObjectStoreSource(bucket.settings(**overrides), "letters", default,
                             cache_path=tmp_path / "state" / "letters.sqlite")


def uri(bucket: Bucket, key: str) -> str:
    return f"s3://{bucket.name}/{key}"


def downloads(src: ObjectStoreSource) -> list[str]:
    """Record the keys the connector GETs (a botocore event hook on its real client)."""
    got: list[str] = []
    src._s3().meta.events.register("before-call.s3.GetObject", lambda params, **_: got.append(params["url_path"]))
    return got


def test_objects_ingest_and_reingest_follows_edits_deletions_and_access(bucket: Bucket, tmp_path: Path) -> None:
    catalog = CatalogStore(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()
    manifest, stats = ingest_once(source(bucket, tmp_path), catalog, "s3")
    assert manifest.new == 3 and stats.stored == 3 and stats.quarantined == 0
    held = stored(catalog)
    assert set(held) == {uri(bucket, k) for k in LETTERS}
    assert held[uri(bucket, "letters/2026/cardio/echo.txt")][0] == {"groups": ["cardiology"]}
    assert held[uri(bucket, "letters/2026/clinic-a.txt")][0] == {"groups": ["outpatients"]}
    assert "mild mitral regurgitation" in held[uri(bucket, "letters/2026/cardio/echo.txt")][1].lower()

    again = source(bucket, tmp_path)
    got = downloads(again)
    manifest, _ = ingest_once(again, catalog, "s3")
    assert manifest.unchanged == 3 and not manifest.to_process
    assert [g for g in got if not g.endswith(".access.json")] == []  # nothing fetched but the rules

    bucket.put("letters/2026/clinic-a.txt", "Clinic letter, corrected. Amlodipine stopped; ankle swelling.")
    bucket.delete("letters/2026/readme.md")
    bucket.put("letters/2026/cardio/.access.json", json.dumps({"groups": ["cardiology", "nursing"]}))
    third = source(bucket, tmp_path)
    got = downloads(third)
    manifest, stats = ingest_once(third, catalog, "s3")
    assert (manifest.changed, manifest.unchanged) == (1, 1)
    assert manifest.deleted == (uri(bucket, "letters/2026/readme.md"),) and len(manifest.access_changed) == 1
    # the scan hashed only the rewritten object; ingestion then read it once
    assert [g for g in got if not g.endswith(".access.json")] == ["/letters/2026/clinic-a.txt"] * 2
    held = stored(catalog)
    assert "ankle swelling" in held[uri(bucket, "letters/2026/clinic-a.txt")][1]
    assert held[uri(bucket, "letters/2026/cardio/echo.txt")][0] == {"groups": ["cardiology", "nursing"]}


def test_scan_lists_documents_under_the_prefix_with_their_hashes(bucket: Bucket, tmp_path: Path) -> None:
    src = ObjectStoreSource(bucket.settings(), "letters")  # no cache: every object hashed
    docs = {d.uri: d for d in src.scan()}
    assert set(docs) == {uri(bucket, k) for k in LETTERS}  # hidden, marker and out-of-prefix keys are not
    for key, text in LETTERS.items():
        d = docs[uri(bucket, key)]
        assert d.sha256 == hashlib.sha256(text.encode()).hexdigest() and d.size == len(text.encode())
        assert d.name == key.rsplit("/", 1)[1] and src.read(d.uri) == text.encode()


def test_object_tags_win_over_access_files(bucket: Bucket, tmp_path: Path) -> None:
    bucket.put("letters/2026/cardio/private.txt", "Consultant note.", tags="enclave-groups=cardiology-consultants")
    bucket.put("letters/2026/leaflet.txt", "Visiting hours leaflet.", tags="enclave-public=true")
    rules = {d.uri: d.access for d in source(bucket, tmp_path, access_from_tags=True).scan()}
    consultants = AccessRule(groups=frozenset({"cardiology-consultants"}))
    assert rules[uri(bucket, "letters/2026/cardio/private.txt")] == consultants
    assert rules[uri(bucket, "letters/2026/leaflet.txt")] == AccessRule(public=True)
    assert rules[uri(bucket, "letters/2026/cardio/echo.txt")] == AccessRule(groups=frozenset({"cardiology"}))
    untagged = {d.uri: d.access for d in source(bucket, tmp_path).scan()}
    assert untagged[uri(bucket, "letters/2026/leaflet.txt")] == AccessRule(groups=frozenset({"outpatients"}))


def test_object_without_a_rule_refuses_the_source_unless_a_default_applies(bucket: Bucket, tmp_path: Path) -> None:
    bucket.delete("letters/2026/.access.json")
    catalog = CatalogStore(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.migrate()
    with pytest.raises(AccessRuleMissingError, match="2 document"):
        ingest_once(source(bucket, tmp_path), catalog, "s3")
    assert stored(catalog) == {}
    rules = {d.uri: d.access for d in source(bucket, tmp_path, AccessRule(groups=frozenset({"records"}))).scan()}
    assert rules[uri(bucket, "letters/2026/readme.md")] == AccessRule(groups=frozenset({"records"}))
    assert rules[uri(bucket, "letters/2026/cardio/echo.txt")] == AccessRule(groups=frozenset({"cardiology"}))


def test_unreadable_access_object_is_a_typed_error(bucket: Bucket, tmp_path: Path) -> None:
    bucket.put("letters/2026/cardio/.access.json", json.dumps({"groups": []}))
    with pytest.raises(InvalidAccessRuleError, match="cardio/.access.json"):
        list(source(bucket, tmp_path).scan())


def test_object_gone_or_outside_the_prefix_is_an_os_error_for_quarantine(bucket: Bucket, tmp_path: Path) -> None:
    src = source(bucket, tmp_path)
    list(src.scan())
    bucket.delete("letters/2026/clinic-a.txt")
    for missing in (uri(bucket, "letters/2026/clinic-a.txt"), uri(bucket, "letters/2025/old.txt"),
                    "s3://another-bucket/letters/2026/x.txt"):
        with pytest.raises(DocumentGoneError) as info:
            src.read(missing)
        assert isinstance(info.value, OSError)


def test_credentials_never_appear_in_errors_logs_or_repr(s3_endpoint: str, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    src = ObjectStoreSource({"endpoint_url": s3_endpoint, "bucket": "no-such-bucket-here", "access_key_id": KEY_ID,
                             "secret_access_key": SECRET}, "letters")
    with pytest.raises(ConnectorError, match="NoSuchBucket") as info:
        list(src.scan())
    shown = [str(info.value), repr(src), repr(src.settings), str(src.settings.model_dump()), caplog.text]
    assert all(SECRET not in s for s in shown)
    unreachable = ObjectStoreSource({"endpoint_url": "http://127.0.0.1:9", "bucket": "b", "access_key_id": KEY_ID,
                                     "secret_access_key": SECRET, "max_attempts": 1}, "letters")
    with pytest.raises(ConnectorError, match="EndpointConnectionError") as info:
        list(unreachable.scan())
    assert SECRET not in str(info.value)


def test_settings_need_both_halves_of_a_key_pair() -> None:
    with pytest.raises(ValueError, match="together"):
        S3Settings.model_validate({"bucket": "b", "access_key_id": KEY_ID})
    assert S3Settings.model_validate({"bucket": "b", "prefix": "/a/b"}).prefix == "a/b/"


def test_s3_is_a_registered_kind(bucket: Bucket) -> None:
    src = connector_for("s3", settings=bucket.settings(), name="letters")
    assert isinstance(src, ObjectStoreSource) and len(list(src.scan())) == 3
