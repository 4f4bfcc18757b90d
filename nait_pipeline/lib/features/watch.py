"""What the sensors look at: a fingerprint of the pool folder and the shards still to featurize."""

from __future__ import annotations

from pathlib import Path

from nait_pipeline.lib.data.ingest import POOL_SUFFIXES
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.layout import LakeLayout


def pool_folder_fingerprint(pools_dir: Path) -> str:
    """Changes when a pool file is added, removed or rewritten (name, size, modification time)."""
    if not pools_dir.is_dir():
        return ""
    entries = []
    for path in sorted(p for p in pools_dir.iterdir() if p.suffix in POOL_SUFFIXES):
        try:
            stat = path.stat()
            entries.append([path.name, stat.st_size, stat.st_mtime_ns])
        except OSError as exc:  # a dangling link, a file removed meanwhile: part of the fingerprint, named
            entries.append([path.name, f"unreadable: {exc.strerror}"])
    return sha256_json(entries)[:16]


def unreadable_pool_files(pools_dir: Path) -> list[str]:
    """Pool files the sensor cannot stat (ingesting them fails naming them)."""
    bad = []
    for path in sorted(p for p in pools_dir.iterdir() if p.suffix in POOL_SUFFIXES) if pools_dir.is_dir() else []:
        try:
            path.stat()
        except OSError as exc:
            bad.append(f"{path.name} ({exc.strerror})")
    return bad


def ingested_fingerprint(layout: LakeLayout) -> str | None:
    """The pool folder fingerprint the lake's current pool was ingested from (None: nothing ingested)."""
    from nait_pipeline.lib.io.lake import read_metadata

    if not layout.pool_examples.exists():
        return None
    return read_metadata(layout.pool_examples).get("folder_fingerprint")


def target_file_fingerprints(targets_dir: Path) -> dict[str, str]:
    """Per target file name, a fingerprint that changes when the file is rewritten."""
    from nait_pipeline.lib.data.targets import TARGET_SUFFIXES

    if not targets_dir.is_dir():
        return {}
    return {p.name: sha256_json([p.stat().st_size, p.stat().st_mtime_ns])[:16]
            for p in sorted(targets_dir.iterdir()) if p.is_file() and p.suffix in TARGET_SUFFIXES}


def unfeaturized_shards(layout: LakeLayout) -> list[str]:
    """Shards of the current pool table with no activations yet, or with activations computed from
    other rows or texts (a pool file rewritten after featurization)."""
    from nait_pipeline.lib.io.pool_view import PoolView

    if not layout.pool_examples.exists():
        return []
    return PoolView.open(layout).stale_shards(layout.pool_activations)
