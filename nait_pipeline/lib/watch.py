"""What the sensors look at: a fingerprint of the pool folder and the shards still to featurize."""

from __future__ import annotations

from pathlib import Path

from nait_pipeline.lib.hashing import sha256_json
from nait_pipeline.lib.ingest import POOL_SUFFIXES
from nait_pipeline.lib.layout import LakeLayout


def pool_folder_fingerprint(pools_dir: Path) -> str:
    """Changes when a pool file is added, removed or rewritten (name, size, modification time)."""
    if not pools_dir.is_dir():
        return ""
    files = sorted(p for p in pools_dir.iterdir() if p.is_file() and p.suffix in POOL_SUFFIXES)
    return sha256_json([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])[:16]


def unfeaturized_shards(layout: LakeLayout) -> list[str]:
    """Shards of the current pool table that have no activation file yet."""
    if not layout.pool_examples.exists():
        return []
    return [shard for shard in layout.kept_shards() if not layout.pool_activations(shard).exists()]
