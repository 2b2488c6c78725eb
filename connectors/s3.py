"""ObjectStoreSource: objects of an S3-compatible bucket (MinIO, Ceph RGW, AWS S3) as documents.

Objects under ``prefix`` are documents, with uri ``s3://<bucket>/<key>``; keys with a hidden path
component (``.something``) are not. Access rules come, as on a file share, from ``.access.json``
objects: the nearest one at or above an object's "directory" (up to the prefix) applies. With
``access_from_tags`` an object's own tags win over those files: ``enclave-groups`` (group names
separated by spaces, the separator S3 tag values allow) or ``enclave-public=true``. Where neither
applies the declaration's default applies, and where there is none the object has no rule and
ingestion refuses the source (deny by default).

An object is fetched and hashed only when its ETag, size or last-modified time differ from those
the cache file remembers (:mod:`connectors.hashcache`); deletions are keys no longer listed.
Credentials come from the settings (``${ENV}`` references) or boto3's standard chain; they are
never logged, and errors name an S3 error code or a class, never a key or a secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from connectors.base import (
    AccessRule,
    ConnectorError,
    DocumentGoneError,
    DocumentUnreadableError,
    InvalidAccessRuleError,
    SourceDocument,
    register,
)
from connectors.hashcache import ContentHashCache
from connectors.settings import ConnectorSettings, EnvSecret, EnvStr
from rag.errors import MissingExtraError

log = logging.getLogger(__name__)

ACCESS_OBJECT = ".access.json"
GROUPS_TAG = "enclave-groups"
PUBLIC_TAG = "enclave-public"
_GONE = {"NoSuchKey", "404", "NotFound"}
_CHUNK = 1 << 20


class S3Settings(ConnectorSettings):
    """Where the bucket is and how to reach it."""

    endpoint_url: EnvStr | None = Field(default=None, description="e.g. https://minio.internal:9000; may be ${ENV}. "
                                                                   "None means AWS itself.")
    bucket: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
    prefix: str = Field(default="", description="Only keys under this prefix ('records/2024/').")
    region: str = "us-east-1"
    access_key_id: EnvSecret | None = Field(default=None, description="None: boto3's standard credential chain.")
    secret_access_key: EnvSecret | None = None
    session_token: EnvSecret | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = Field(default=None, description="PEM file of the organisation's CA.")
    addressing_style: Literal["path", "virtual", "auto"] = Field(default="path", description=(
        "path suits MinIO and Ceph without wildcard DNS."))
    access_from_tags: bool = Field(default=False, description=(
        "Read each object's tags (one request per object and scan) for an access rule."))
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)

    @field_validator("prefix")
    @classmethod
    def _directory(cls, value: str) -> str:
        value = value.lstrip("/")
        return value if not value or value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _key_pair(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give access_key_id and secret_access_key together, or neither (boto3's chain)")
        return self


def access_rule_from_tags(tags: Mapping[str, str]) -> AccessRule | None:
    """The rule an object's tags give, or None. ValueError when the tags are there but say nothing."""
    if tags.get(PUBLIC_TAG, "").strip().lower() == "true":
        return AccessRule(public=True)
    if GROUPS_TAG in tags:
        groups = tags[GROUPS_TAG].split()
        if not groups:
            raise ValueError(f"tag {GROUPS_TAG} names no group")
        return AccessRule(groups=frozenset(groups))
    return None


@register("s3")
class ObjectStoreSource:
    """Objects of one bucket and prefix. Cheap to build; the client is made on first use."""

    def __init__(self, settings: S3Settings | Mapping[str, Any], name: str,
                 default_access: AccessRule | None = None, *, cache_path: Path | None = None) -> None:
        self.settings = settings if isinstance(settings, S3Settings) else S3Settings.model_validate(settings)
        self.name = name
        self.default_access = default_access
        self._client: Any = None
        self._uri_prefix = f"s3://{self.settings.bucket}/"
        fingerprint = hashlib.sha256(f"{self.settings.endpoint_url}|{self.settings.bucket}".encode()).hexdigest()
        self._cache = ContentHashCache(cache_path, fingerprint) if cache_path is not None else None

    def __repr__(self) -> str:
        return f"ObjectStoreSource(name={self.name!r}, location={self.location!r})"

    @property
    def location(self) -> str:
        endpoint = self.settings.endpoint_url or "aws"
        return f"{endpoint} s3://{self.settings.bucket}/{self.settings.prefix}"

    def _s3(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise MissingExtraError("boto3", "s3") from None
            s = self.settings
            session = boto3.session.Session(
                aws_access_key_id=s.access_key_id.get_secret_value() if s.access_key_id else None,
                aws_secret_access_key=s.secret_access_key.get_secret_value() if s.secret_access_key else None,
                aws_session_token=s.session_token.get_secret_value() if s.session_token else None,
                region_name=s.region)
            config = Config(s3={"addressing_style": s.addressing_style}, connect_timeout=s.connect_timeout_s,
                            read_timeout=s.read_timeout_s, retries={"max_attempts": s.max_attempts, "mode": "standard"})
            verify: bool | str = str(s.ca_bundle) if s.ca_bundle else s.verify_tls
            self._client = session.client("s3", endpoint_url=s.endpoint_url, verify=verify, config=config)
        return self._client

    def _failure(self, exc: Exception, doing: str) -> ConnectorError:
        """A typed error naming the S3 error code or the exception class: never a key, URL or secret."""
        code = _error_code(exc)
        what = f"S3 error {code}" if code else type(exc).__name__
        return ConnectorError(f"source {self.name!r}: {doing} failed ({what}); check the endpoint, bucket and "
                              "credentials of the source")

    # -- listing ------------------------------------------------------------------------------------

    def _listing(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Documents (S3 listing entries) and the ``.access.json`` keys by relative directory."""
        objects: list[dict[str, Any]] = []
        access_files: dict[str, str] = {}
        pages = self._s3().get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=self.settings.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.settings.prefix):]
                parts = rel.split("/")
                if not rel or rel.endswith("/"):
                    continue  # "directory" markers
                if parts[-1] == ACCESS_OBJECT and not any(p.startswith(".") for p in parts[:-1]):
                    access_files["/".join(parts[:-1])] = obj["Key"]
                elif not any(p.startswith(".") for p in parts):
                    objects.append(obj)
        return objects, access_files

    def _rule_for(self, directory: str, access_files: Mapping[str, str],
                  cache: dict[str, AccessRule | None]) -> AccessRule | None:
        if directory in cache:
            return cache[directory]
        rule: AccessRule | None
        if directory in access_files:
            key = access_files[directory]
            body = self._s3().get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
            try:
                rule = AccessRule.from_json(json.loads(body.decode("utf-8")))
            except (ValueError, UnicodeDecodeError, AttributeError) as exc:
                raise InvalidAccessRuleError(f"source {self.name!r}: {self._uri_prefix}{key}: {exc}") from None
        elif directory == "":
            rule = self.default_access
        else:
            rule = self._rule_for(posixpath.dirname(directory), access_files, cache)
        cache[directory] = rule
        return rule

    def _tag_rule(self, key: str) -> AccessRule | None:
        tags = self._s3().get_object_tagging(Bucket=self.settings.bucket, Key=key).get("TagSet", [])
        try:
            return access_rule_from_tags({t["Key"]: t["Value"] for t in tags})
        except ValueError as exc:
            raise InvalidAccessRuleError(f"source {self.name!r}: {self._uri_prefix}{key}: {exc}") from None

    def _hash_object(self, key: str) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        body = self._s3().get_object(Bucket=self.settings.bucket, Key=key)["Body"]
        for block in body.iter_chunks(_CHUNK):
            digest.update(block)
            size += len(block)
        return digest.hexdigest(), size

    # -- the Connector protocol -------------------------------------------------------------------

    def scan(self) -> Iterator[SourceDocument]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            docs, entries = self._scan()
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, "listing the bucket") from None
        if self._cache is not None:
            self._cache.record_scan(entries)
        yield from docs

    def _scan(self) -> tuple[list[SourceDocument], list[tuple[str, str, str, int]]]:
        objects, access_files = self._listing()
        rules: dict[str, AccessRule | None] = {}
        markers = [(self._uri_prefix + o["Key"], _marker(o)) for o in objects]
        known = self._cache.lookup_many(markers) if self._cache is not None else {}
        docs: list[SourceDocument] = []
        entries: list[tuple[str, str, str, int]] = []
        for obj, (uri, marker) in zip(objects, markers, strict=True):
            key = obj["Key"]
            rel_dir = posixpath.dirname(key[len(self.settings.prefix):])
            rule = self._tag_rule(key) if self.settings.access_from_tags else None
            if rule is None:
                rule = self._rule_for(rel_dir, access_files, rules)
            if uri in known:
                sha, size = known[uri]
            else:
                sha, size = self._hash_object(key)
            docs.append(SourceDocument(uri=uri, sha256=sha, size=size, access=rule, name=posixpath.basename(key)))
            entries.append((uri, marker, sha, size))
        log.info("s3 source scanned", extra={"source": self.name, "documents": len(docs),
                                             "hashed": len(docs) - len(known), "unchanged_by_etag": len(known)})
        return docs, entries

    def read(self, uri: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if not uri.startswith(self._uri_prefix + self.settings.prefix):
            raise DocumentGoneError(f"source {self.name!r}: {uri} is outside the source's bucket and prefix")
        key = uri[len(self._uri_prefix):]
        try:
            response = self._s3().get_object(Bucket=self.settings.bucket, Key=key)
            data: bytes = response["Body"].read()
        except ClientError as exc:
            code = _error_code(exc)
            if code in _GONE:
                raise DocumentGoneError(f"source {self.name!r}: {uri} is no longer in the bucket") from None
            if code in {"AccessDenied", "InvalidObjectState"} or code.startswith("4"):
                raise DocumentUnreadableError(f"source {self.name!r}: {uri} cannot be read (S3 error {code})") from None
            raise self._failure(exc, f"reading {uri}") from None
        except BotoCoreError as exc:
            raise self._failure(exc, f"reading {uri}") from None
        # No cache update here: an object cannot change without its ETag or time changing, and the
        # time in a GET's headers has less precision than the listing's, so it would never match.
        return data


def _marker(obj: Mapping[str, Any]) -> str:
    """What changes whenever an object is rewritten: ETag, size and last-modified time."""
    modified = obj.get("LastModified")
    stamp = modified.isoformat() if isinstance(modified, datetime) else str(modified)
    return f"{obj.get('ETag')}|{obj.get('Size')}|{stamp}"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
