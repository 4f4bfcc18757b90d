"""Content hashes used for ids, data versions and lineage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(value: object) -> str:
    """Hash of a JSON-serialisable value, independent of dict key order."""
    return sha256_text(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_lines(lines: Iterable[str]) -> str:
    """Hash of an ordered sequence of strings (each terminated by a newline)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def sha256_tree(paths: Iterable[Path], root: Path) -> str:
    """Hash of files' relative names and contents: a code version for SQL folders and the like."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
