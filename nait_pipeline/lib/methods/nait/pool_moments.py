"""NAIT-C's pool moments kept per forward-store shard.

The mean, SD and 1/K-correlation NAIT-C standardises with are of the pool alone (and the template prefix),
not of a capability: computing them is a full read of the store plus a float64 pass, the costliest part of
scoring. Each shard's sums are kept beside the store, keyed by the shard's store version, the prefix version
and whether the features are cleaned, so a new capability (and a pool that grew by a few shards) reads only
the shards whose sums are missing or stale. Sums add exactly as the single pass did, so the scores do not
depend on what was cached.
"""

from __future__ import annotations

import numpy as np

from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import atomic_path
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.methods.nait.nait_c_math import PoolMoments

MOMENTS_VERSION = "1"


class MomentCache:
    def __init__(self, layout: LakeLayout, prefix_version: str):
        self.layout = layout
        self.prefix_version = prefix_version

    def key(self, store_version: str, clean: bool) -> str:
        return sha256_json({"store": store_version, "prefix": self.prefix_version if clean else None,
                            "clean": clean, "code": MOMENTS_VERSION})[:16]

    def get(self, shard: str, store_version: str | None, clean: bool) -> PoolMoments | None:
        """The shard's kept sums, or None when there are none for this store version, prefix and cleaning."""
        path = self.layout.pool_moments(shard)
        if store_version is None or not path.exists():
            return None
        with path.open("rb") as handle, np.load(handle) as stored:
            if str(stored["key"]) != self.key(store_version, clean):
                return None
            return PoolMoments.from_arrays(stored)

    def put(self, shard: str, store_version: str | None, clean: bool, moments: PoolMoments) -> None:
        if store_version is None:  # a store without a version cannot be matched later: nothing worth keeping
            return
        with atomic_path(self.layout.pool_moments(shard), ".npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(self.key(store_version, clean)), **moments.arrays())
