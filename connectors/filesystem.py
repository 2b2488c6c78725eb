"""FileShareSource: a mounted file share (NFS, SMB, a local directory) as a document source.

Documents are identified by their path relative to the share's root, versioned by the sha256 of
their bytes. Access rules come from ``.access.json`` files: the nearest one at or above a file's
directory applies (``{"groups": ["oncology"]}`` or ``{"public": true}``); where none does, the
default rule given by the caller applies; where there is neither, the document has no rule and
the pipeline refuses it (deny by default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from connectors.base import AccessRule, SourceDocument, register
from connectors.settings import ConnectorSettings

ACCESS_FILE = ".access.json"
_HASH_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class FileShareSettings(ConnectorSettings):
    """A file share in a source declaration."""

    root: Path = Field(description="Directory (the share's mount point) to ingest.")


class InvalidAccessFileError(ValueError):
    """An ``.access.json`` exists but does not say who may see the documents under it."""


@register("filesystem")
class FileShareSource:
    def __init__(self, root: str | Path, name: str | None = None, default_access: AccessRule | None = None) -> None:
        self.root = Path(root).resolve()
        self.name = name or self.root.name
        self.default_access = default_access

    def _rule_for(self, directory: Path, cache: dict[Path, AccessRule | None]) -> AccessRule | None:
        if directory in cache:
            return cache[directory]
        access_file = directory / ACCESS_FILE
        rule: AccessRule | None
        if access_file.is_file():
            try:
                rule = AccessRule.from_json(json.loads(access_file.read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidAccessFileError(f"{access_file}: {exc}") from exc
        elif directory == self.root or directory.parent == directory:
            rule = self.default_access
        else:
            rule = self._rule_for(directory.parent, cache)
        cache[directory] = rule
        return rule

    def scan(self) -> Iterator[SourceDocument]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source directory {self.root} does not exist")
        cache: dict[Path, AccessRule | None] = {}
        for path in sorted(self.root.rglob("*")):
            rel_parts = path.relative_to(self.root).parts
            if not path.is_file() or path.is_symlink() or any(p.startswith(".") for p in rel_parts):
                continue  # hidden files (.access.json among them) and links out of the share are not documents
            yield SourceDocument(
                uri=path.relative_to(self.root).as_posix(),
                sha256=file_sha256(path),
                size=path.stat().st_size,
                access=self._rule_for(path.parent, cache),
                name=path.name,
            )

    def read(self, uri: str) -> bytes:
        path = (self.root / uri).resolve()
        if not path.is_relative_to(self.root):
            raise PermissionError(f"{uri} is outside the source root")
        return path.read_bytes()
