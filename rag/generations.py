"""Generations of an index on disk, published atomically: what the FAISS and BM25 indexes save through.

A directory holds numbered generation directories (``gen-00000007``) and one ``manifest.json``
naming the generation in force. :meth:`GenerationDirectory.publish` writes a new generation,
fsyncs its files and directory, then switches the manifest with ``os.replace`` and fsyncs the
parent: a crash at any point leaves the previous generation in force, whole. Older generations
are removed after the switch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list is what makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class GenerationDirectory:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        # The manifest last read and the file identity it was read at: every search asks which
        # generation is in force, and a stat() answers that for the price of reading and parsing it.
        # A publish replaces the file (a new inode), so its identity changes whenever it does.
        self._read: tuple[tuple[int, int, int, int], dict[str, Any]] | None = None

    def manifest(self) -> dict[str, Any] | None:
        """The manifest in force, or None before the first generation."""
        path = self.directory / MANIFEST
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        identity = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)
        read = self._read
        if read is not None and read[0] == identity:
            return dict(read[1])
        manifest: dict[str, Any] = json.loads(path.read_text())
        self._read = (identity, manifest)
        return dict(manifest)

    def path(self, manifest: Mapping[str, Any]) -> Path:
        """The generation directory a manifest names."""
        return self.directory / str(manifest["path"])

    def publish(self, write: Callable[[Path], Mapping[str, Any]]) -> dict[str, Any]:
        """Write the next generation with ``write(directory)`` and put it in force.

        ``write`` fills the empty generation directory and returns the fields its manifest adds to
        ``generation`` and ``path``. Returns the manifest now in force.
        """
        current = self.manifest()
        generation = int(current["generation"]) + 1 if current else 1
        name = f"gen-{generation:08d}"
        gen_dir = self.directory / name
        if gen_dir.exists():  # left by a crash before its manifest switched: never in force
            shutil.rmtree(gen_dir)
        gen_dir.mkdir(parents=True)
        fields = write(gen_dir)
        for written in sorted(gen_dir.rglob("*"), reverse=True):  # files before the directories holding them
            fsync_path(written)
        fsync_path(gen_dir)
        manifest = {"generation": generation, "path": name, **fields}
        tmp = self.directory / (MANIFEST + ".tmp")
        write_durably(tmp, json.dumps(manifest, indent=2).encode())
        os.replace(tmp, self.directory / MANIFEST)
        fsync_path(self.directory)
        for old in self.directory.glob("gen-*"):
            if old.name < name:
                shutil.rmtree(old, ignore_errors=True)
        return manifest
