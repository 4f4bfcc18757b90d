"""Feature kinds: what a scorer or a policy reads from the lake, as registered objects.

A kind is a store that every method reading it shares: the forward store (one pass per example), the
gradient store (a LoRA warmup, then per-example gradients at each checkpoint), the selector's perplexity
trajectories and clusters (Learning Percentage), the template prefix (NAIT-C's cleaning). Each kind says
which assets build its pool and target sides and how they are partitioned, reads its pool side lazily
(checked against the current pool version), and prices itself from the stats its files record. Shared
code (the runner, the asset factory, the orchestrator, the comparison) asks the kind and never names one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout

SHARD = "shard"  # one partition per pool shard
CAPABILITY = "capability"  # one partition per capability
UNPARTITIONED = "none"
PARTITIONINGS = (SHARD, CAPABILITY, UNPARTITIONED)


class MethodInputError(ValueError):
    """A method asked for something the store does not hold, or parameters it cannot use."""


@dataclass(frozen=True)
class FeatureAsset:
    """One asset that builds part of a kind, and how it is partitioned."""

    name: str
    partitioning: str = UNPARTITIONED

    def __post_init__(self) -> None:
        if self.partitioning not in PARTITIONINGS:
            raise ValueError(f"{self.name}: partitioning must be one of {PARTITIONINGS}, got {self.partitioning!r}")


@dataclass(frozen=True)
class FeatureKind:
    name: str
    description: str
    pool_assets: tuple[FeatureAsset, ...]  # in build order (a warmup before the gradients it is taken at)
    target_assets: tuple[FeatureAsset, ...] = ()
    # (layout, vectors, scalars, needed_by) -> (pool features with .ids and .metadata, pool version)
    read_pool: Callable[..., tuple[object, str]] | None = None
    # (layout, capabilities) -> (pool files, target files) whose recorded "stats" price the kind
    cost_files: Callable[[LakeLayout, Sequence[str]], tuple[list[Path], list[Path]]] | None = None
    # Too costly for the default `nait-pipeline materialize` on a CPU (per-example gradients): built when a
    # method reading it is named, from the UI, or by a protocol that lists one.
    on_demand: bool = False
    # Minutes where the other kinds take seconds (LP's selector fine-tunes a model): the methods reading it
    # are selected after the others, so the first subsets come first.
    slow: bool = False

    @property
    def assets(self) -> tuple[FeatureAsset, ...]:
        return (*self.pool_assets, *self.target_assets)

    def asset_names(self) -> list[str]:
        return [asset.name for asset in self.assets]

    def partitioning(self, asset_name: str) -> str:
        for asset in self.assets:
            if asset.name == asset_name:
                return asset.partitioning
        raise KeyError(f"{asset_name!r} is not an asset of the {self.name} feature kind")

    def cost(self, layout: LakeLayout, capabilities: Sequence[str], with_targets: bool) -> tuple[float, int]:
        """(seconds, tokens) of building the pool side, plus the target side of ``capabilities``."""
        if self.cost_files is None:
            return 0.0, 0
        pool_files, target_files = self.cost_files(layout, capabilities)
        return recorded_cost([*pool_files, *(target_files if with_targets else [])])


def recorded_cost(paths: Sequence[Path]) -> tuple[float, int]:
    """Sum of the ``stats`` (seconds, tokens) each file's metadata records of the run that wrote it."""
    seconds, tokens = 0.0, 0
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: its featurization cost cannot be read")
        stats = read_metadata(path).get("stats") or {}
        seconds += float(stats.get("seconds", 0.0))
        tokens += int(stats.get("tokens", 0))
    return seconds, tokens
