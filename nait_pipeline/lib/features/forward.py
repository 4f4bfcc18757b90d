"""The forward feature kind: one pass per pool and in-domain example (``pool_activations`` per shard,
``target_activations`` per capability), read lazily shard by shard; and the template prefix NAIT-C
removes from it (``template_prefix``, one forward of the constant prefix)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.parquet as pq

from nait_pipeline.lib.features.feature_store import PoolStore, stale_shards
from nait_pipeline.lib.features.kinds import CAPABILITY, SHARD, FeatureAsset, FeatureKind, MethodInputError
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout

POOL_ASSET = FeatureAsset("pool_activations", SHARD)
TARGET_ASSET = FeatureAsset("target_activations", CAPABILITY)


def require_store_columns(path, needed: Sequence[str], what: str) -> None:
    """Fail naming the asset to materialize when a store lacks a feature a method reads."""
    names = set(pq.read_schema(path).names)
    missing = [n for n in needed if n not in names]
    if missing:
        raise MethodInputError(f"{what} needs feature(s) {missing}, which {path.name} does not hold: "
                               f"re-materialize {POOL_ASSET.name} / {TARGET_ASSET.name} with the current featurizer")


def read_pool_store(layout: LakeLayout, vectors: Sequence[str], scalars: Sequence[str] = (),
                    needed_by: str = "this method") -> tuple[PoolStore, str]:
    """The stored forward features of every shard of the current pool, and the pool version."""
    if not layout.pool_examples.exists():
        raise FileNotFoundError(f"{layout.pool_examples} is missing: materialize it_pool first")
    shards = layout.kept_shards()
    pool_version = read_metadata(layout.pool_examples)["pool_version"]
    paths = [layout.pool_activations(s) for s in shards]
    unusable = stale_shards(layout.pool_examples, layout.pool_activations)  # missing, or of other texts
    missing = [s for s in unusable if not layout.pool_activations(s).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} pool shard(s) not featurized yet, e.g. {missing[:5]}: "
                                f"materialize {POOL_ASSET.name} for them")
    if unusable:  # every one of them has a store, computed from other texts
        raise MethodInputError(f"{len(unusable)} pool shard(s) were featurized from other rows or texts than the "
                               f"pool holds now (a pool file rewritten?), e.g. {unusable[:5]}: re-materialize "
                               f"{POOL_ASSET.name} for them")
    for path in paths:
        require_store_columns(path, [*vectors, *scalars], needed_by)
    return PoolStore(paths, scalars=scalars), pool_version


def _cost_files(layout: LakeLayout, capabilities: Sequence[str]):
    return ([layout.pool_activations(s) for s in layout.kept_shards()],
            [layout.target_activations(c) for c in capabilities])


FORWARD = FeatureKind(
    name="forward",
    description="one forward pass per example: per-layer token means and first-token states, the RDS+ "
                "position-weighted last-layer mean, the response loss and token counts",
    pool_assets=(POOL_ASSET,),
    target_assets=(TARGET_ASSET,),
    read_pool=read_pool_store,
    cost_files=_cost_files,
)

TEMPLATE_PREFIX = FeatureKind(
    name="template_prefix",
    description="one forward of the constant chat prefix every rendered example starts with: its per-layer "
                "state sums and first-token states (what NAIT-C removes from the stored token means)",
    pool_assets=(FeatureAsset("template_prefix"),),
)
