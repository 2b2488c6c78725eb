from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import connectors.base
from connectors.base import AccessRule, Connector, connector_for
from connectors.filesystem import FileShareSource, InvalidAccessFileError, file_sha256
from rag.errors import ConfigurationError
from rag.plugins import connector_for as plugin_connector_for
from rag.plugins import distribution_of


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


def test_a_connector_plugin_loads_only_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_enclave_source.py").write_text(
        "class AcmeSource:\n"
        "    def __init__(self, **options):\n"
        "        self.name, self.options = 'acme', options\n"
        "    def scan(self):\n"
        "        return []\n"
        "    def read(self, uri):\n"
        "        raise FileNotFoundError(uri)\n")
    dist_info = site / "acme_enclave_source-2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-enclave-source\nVersion: 2.3\n")
    (dist_info / "entry_points.txt").write_text("[enclave.connectors]\nacme = acme_enclave_source:AcmeSource\n")
    (dist_info / "RECORD").write_text("acme_enclave_source.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "acme_enclave_source", raising=False)
    monkeypatch.setattr(connectors.base, "_BUILT_INS", dict(connectors.base._BUILT_INS))  # registered for this test

    with pytest.raises(ConfigurationError, match=r"'acme' from acme-enclave-source 2.3 .* ENCLAVE_PLUGINS"):
        plugin_connector_for("acme", frozenset(), root=tmp_path)
    assert "acme_enclave_source" not in sys.modules
    with pytest.raises(ConfigurationError, match="no connector of kind 'nope'"):
        plugin_connector_for("nope", frozenset({"nope"}))

    source = plugin_connector_for("acme", frozenset({"acme"}), root=tmp_path)
    assert isinstance(source, Connector) and source.options == {"root": tmp_path}  # type: ignore[attr-defined]  # AcmeSource keeps them
    assert distribution_of(source) == "acme-enclave-source 2.3"
    assert distribution_of(plugin_connector_for("filesystem", frozenset(), root=tmp_path)).startswith("enclave-rag ")


def test_access_rule_admits_members_only() -> None:
    rule = AccessRule(groups=frozenset({"oncology"}))
    assert rule.admits(["oncology", "x"]) and not rule.admits(["finance"]) and not rule.admits([])
    assert AccessRule(public=True).admits([])
    with pytest.raises(ValueError):
        AccessRule()
