"""The selector feature kind (Learning Percentage reads it): a small model fine-tuned over a seeded
slice of the pool records every row's perplexity before training and after each epoch
(``selector_trajectories``, :mod:`~nait_pipeline.lib.features.trajectories`), and the same rows are
clustered by sentence embeddings (``selector_clusters``, :mod:`~nait_pipeline.lib.features.clusters`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.features.kinds import FeatureAsset, FeatureKind, MethodInputError
from nait_pipeline.lib.io.lake import read_metadata, read_table
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView

TRAJECTORIES_ASSET = FeatureAsset("selector_trajectories")
CLUSTERS_ASSET = FeatureAsset("selector_clusters")


@dataclass
class TrajectoryPool:
    ids: list[str]
    perplexities: np.ndarray  # [N, E+1]
    no_response: np.ndarray
    clusters: np.ndarray
    metadata: dict


def read_trajectory_pool(layout: LakeLayout, vectors: Sequence[str] = (), scalars: Sequence[str] = (),
                         needed_by: str = "") -> tuple[TrajectoryPool, str]:
    """The stored trajectories and clusters of the selector's slice, checked to be of the current pool."""
    for path, asset in ((layout.selector_trajectories, TRAJECTORIES_ASSET), (layout.selector_clusters, CLUSTERS_ASSET)):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: materialize {asset.name} first")
    meta = read_metadata(layout.selector_trajectories)
    pool_version = PoolView.open(layout).version
    if meta["pool_version"] != pool_version:
        raise MethodInputError(f"{TRAJECTORIES_ASSET.name} was computed on pool version {meta['pool_version']}, the "
                               f"pool is now {pool_version}: re-materialize {TRAJECTORIES_ASSET.name} and "
                               f"{CLUSTERS_ASSET.name}")
    trajectories = read_table(layout.selector_trajectories)
    clusters = read_table(layout.selector_clusters, columns=["example_id", "cluster"])
    cluster_meta = read_metadata(layout.selector_clusters)
    ids = trajectories.column("example_id").to_pylist()
    if cluster_meta.get("trajectories_version") != meta["store_version"] or \
            clusters.column("example_id").to_pylist() != ids:
        raise MethodInputError(f"{CLUSTERS_ASSET.name} was built for other rows than {TRAJECTORIES_ASSET.name} "
                               f"holds: re-materialize {CLUSTERS_ASSET.name}")
    epochs = sorted(int(name[1:]) for name in trajectories.column_names if name[0] == "p" and name[1:].isdigit())
    perplexities = np.stack([trajectories.column(f"p{e}").to_numpy() for e in epochs], axis=1)
    return TrajectoryPool(
        ids=ids, perplexities=perplexities, no_response=trajectories.column("no_response").to_numpy(zero_copy_only=False),
        clusters=clusters.column("cluster").to_numpy(),
        metadata={"model_id": meta["selector_model_id"], "template_hash": meta["template_hash"],
                  "features_version": f"{meta['store_version']}:{cluster_meta['clusters_version']}"},
    ), pool_version


def _cost_files(layout: LakeLayout, capabilities: Sequence[str]):
    return [layout.selector_trajectories, layout.selector_clusters], []


SELECTOR = FeatureKind(
    name="selector",
    description="a selector model fine-tuned over a seeded slice of the pool: each row's response perplexity "
                "before training and after every epoch, and the slice's sentence-embedding clusters",
    pool_assets=(TRAJECTORIES_ASSET, CLUSTERS_ASSET),
    read_pool=read_trajectory_pool,
    cost_files=_cost_files,
    slow=True,
)
