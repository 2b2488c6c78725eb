from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.base import AccessRule, connector_for
from connectors.filesystem import FileShareSource, InvalidAccessFileError, file_sha256


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_nearest_access_file_wins_over_ancestors(tmp_path: Path) -> None:
    _write(tmp_path / ".access.json", json.dumps({"groups": ["staff"]}))
    _write(tmp_path / "a" / ".access.json", json.dumps({"groups": ["oncology"]}))
    _write(tmp_path / "a" / "b" / "note.txt", "x")
    _write(tmp_path / "top.txt", "y")
    docs = {d.uri: d for d in FileShareSource(tmp_path).scan()}
    assert docs["a/b/note.txt"].access == AccessRule(groups=frozenset({"oncology"}))
    assert docs["top.txt"].access == AccessRule(groups=frozenset({"staff"}))


def test_default_rule_applies_only_where_no_access_file_does(tmp_path: Path) -> None:
    _write(tmp_path / "pub" / ".access.json", json.dumps({"public": True}))
    _write(tmp_path / "pub" / "x.txt", "x")
    _write(tmp_path / "other" / "y.txt", "y")
    src = FileShareSource(tmp_path, default_access=AccessRule(groups=frozenset({"g"})))
    docs = {d.uri: d for d in src.scan()}
    assert docs["pub/x.txt"].access == AccessRule(public=True)
    assert docs["other/y.txt"].access == AccessRule(groups=frozenset({"g"}))


def test_document_without_any_rule_has_none(tmp_path: Path) -> None:
    _write(tmp_path / "y.txt", "y")
    (doc,) = FileShareSource(tmp_path).scan()
    assert doc.access is None


def test_access_file_without_groups_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path / ".access.json", json.dumps({"groups": []}))
    _write(tmp_path / "y.txt", "y")
    with pytest.raises(InvalidAccessFileError):
        list(FileShareSource(tmp_path).scan())


def test_scan_reports_content_hash_and_skips_hidden_files(tmp_path: Path) -> None:
    f = _write(tmp_path / "doc.txt", "hello")
    _write(tmp_path / ".hidden" / "secret.txt", "no")
    (doc,) = FileShareSource(tmp_path, default_access=AccessRule(public=True)).scan()
    assert doc.sha256 == file_sha256(f) and doc.size == 5 and doc.name == "doc.txt"


def test_read_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _write(tmp_path / "outside.txt", "x")
    with pytest.raises(PermissionError):
        FileShareSource(root).read("../outside.txt")


def test_connectors_are_found_by_kind(tmp_path: Path) -> None:
    assert isinstance(connector_for("filesystem", root=tmp_path), FileShareSource)
    with pytest.raises(KeyError):
        connector_for("no-such-kind")


def test_access_rule_admits_members_only() -> None:
    rule = AccessRule(groups=frozenset({"oncology"}))
    assert rule.admits(["oncology", "x"]) and not rule.admits(["finance"]) and not rule.admits([])
    assert AccessRule(public=True).admits([])
    with pytest.raises(ValueError):
        AccessRule()
