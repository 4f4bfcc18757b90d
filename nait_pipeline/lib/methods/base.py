"""What a selection method is: a scorer over the shared feature store plus a selection policy.

A method is a composition of shared stages (methods.md section 8):
featurize (the forward store) -> target model -> score -> policy. The featurizer is shared by every
method; a :class:`Scorer` names the stored features it reads, how it turns a capability's in-domain
set into a target model, and how it scores the pool; a :class:`Method` names the policy that turns
scores into subsets. Several methods may share one scorer (RDS+ round-robin and top-B, the three
perplexity bands), so a score is computed once and selected from many ways.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from nait_pipeline.lib.features.feature_store import PoolStore, stale_shards
from nait_pipeline.lib.io.lake import read_metadata
from nait_pipeline.lib.io.layout import LakeLayout

ALL = "all"  # the capability label of a subset selected for every capability at once


class MethodInputError(ValueError):
    """A method asked for something the store does not hold, or parameters it cannot use."""


@dataclass
class Scored:
    """What a scorer produces for one capability (or for the pool, for untargeted scorers)."""

    scores: np.ndarray  # [N] float64, higher is selected first by top-k policies
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-example columns to store
    matrix: np.ndarray | None = None  # [N, m] one score per target instance (RDS+), kept for policies
    matrix_ids: list[str] = field(default_factory=list)  # the m target ids, column order of ``matrix``
    unscored: np.ndarray | None = None  # [N] bool: rows with no defined score (reported, never selected)
    notes: dict = field(default_factory=dict)  # numbers worth showing in metadata


@dataclass(frozen=True)
class Scorer:
    """Stages 3-4: how in-domain data becomes a target model and how the pool is scored against it."""

    name: str  # names the scores asset (`<name>_scores`) and files (`scores/<name>__<capability>`)
    description: str
    params: type  # a dataclass of scoring parameters (config in the UI, recorded in lineage)
    pool_vectors: tuple[str, ...]  # stored per-example vectors read from the pool store
    pool_scalars: tuple[str, ...]
    score: Callable[..., Scored]  # score(pool, target, params) -> Scored
    targeted: bool = True  # False: one score for the whole pool (perplexity, length)
    load_target: Callable[..., tuple[object, dict]] | None = None  # (layout, capability, params) -> (target, meta)
    target_assets: tuple[str, ...] = ()  # assets the target model is read from
    version_key: str = "target"  # the key the target version is hashed under (NAIT keeps "directions")
    code_version: str = "1"
    # Another feature kind than the forward store: read_pool(layout) -> (features with .ids and .metadata,
    # pool version); its metadata's "features_version" is hashed into the score version.
    read_pool: Callable[..., tuple[object, str]] | None = None
    feature_assets: tuple[str, ...] = ("pool_activations",)  # the assets the pool features come from
    group_columns: tuple[str, ...] = ()  # score columns a policy reads as row groups (LP: cluster)
    # A feature kind too costly for the default `nait-pipeline materialize` on a CPU (per-example gradients):
    # built when its methods are named with --methods, from the UI, or by a protocol that lists them.
    on_demand: bool = False


@dataclass
class SelectionInput:
    """Everything a policy may look at: scores per capability, their matrices, pool groups."""

    layout: LakeLayout
    ids: list[str]
    pool_version: str
    scores: dict[str, np.ndarray]  # capability (or "all") -> [N]
    score_versions: dict[str, str]
    score_params: dict[str, dict]
    unscored: np.ndarray  # [N] bool, rows no policy may select
    groups: dict[str, list[str]] = field(default_factory=dict)  # e.g. "source" -> [N] labels
    matrix_loader: Callable[[str], tuple[np.ndarray, list[str]]] | None = None

    def matrix(self, capability: str) -> tuple[np.ndarray, list[str]]:
        if self.matrix_loader is None:
            raise MethodInputError("this method's scorer keeps no per-target score matrix")
        return self.matrix_loader(capability)


@dataclass(frozen=True)
class Chosen:
    """One subset a policy produced: indices into ``SelectionInput.ids`` in rank order."""

    capability: str
    indices: list[int]
    scores: np.ndarray | None  # the score each pool row was ranked by (None: random)
    params: dict  # recorded in lineage and hashed into the subset version
    budget_ratio: float
    slot: str = ""  # distinguishes several subsets of one method and capability (random seeds)
    # The size the method's own rounding rule gives (LP's per-cluster chunks); None: ceil(r * N).
    expected_size: int | None = None
    # Per selected row (aligned with ``indices``), the capability whose turn chose it (all-capability merges).
    chosen_by: list[str] | None = None
    # Rows of the expected size the policy could not fill (G2IS's walk under its hard constraints): the
    # subset holds expected_size - shortfall rows; the subsets asset warns.
    shortfall: int = 0


@dataclass(frozen=True)
class Method:
    """A registered selection method: its scorer (None for random) and its policy."""

    name: str
    description: str
    scorer: Scorer | None
    params: type  # a dataclass of selection parameters; must have ``budget_ratio``
    select: Callable[[SelectionInput, object], list[Chosen]]
    policy: str  # one line for the README table
    source: str  # where the method comes from
    cost: str  # what it costs, in words
    code_version: str = "1"
    recipe: str = ""  # how a dump reproduces the selection with NumPy or the official code
    policy_assets: tuple[str, ...] = ()  # assets the policy reads beside the scores (G2IS: gradient_graph)


def params_dict(params) -> dict:
    return dataclasses.asdict(params)


def make_params(cls: type, values: Mapping | None) -> object:
    """Build a params dataclass from config values, naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MethodInputError(f"unknown parameter(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    return cls(**values)


def require_store_columns(path: Path, needed: Sequence[str], what: str) -> None:
    """Fail naming the asset to materialize when a store lacks a feature a method reads."""
    names = set(pq.read_schema(path).names)
    missing = [n for n in needed if n not in names]
    if missing:
        raise MethodInputError(f"{what} needs feature(s) {missing}, which {path.name} does not hold: "
                               "re-materialize pool_activations / target_activations with the current featurizer")


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
                                "materialize pool_activations for them")
    if unusable:  # every one of them has a store, computed from other texts
        raise MethodInputError(f"{len(unusable)} pool shard(s) were featurized from other rows or texts than the "
                               f"pool holds now (a pool file rewritten?), e.g. {unusable[:5]}: re-materialize "
                               "pool_activations for them")
    for path in paths:
        require_store_columns(path, [*vectors, *scalars], needed_by)
    return PoolStore(paths, scalars=scalars), pool_version


def pool_groups(layout: LakeLayout, ids: Sequence[str], column: str = "source") -> list[str]:
    """A pool column (the source, by default) aligned with ``ids``."""
    table = pq.read_table(layout.pool_examples, columns=["example_id", column], filters=[("status", "=", "kept")])
    by_id = dict(zip(table.column("example_id").to_pylist(), table.column(column).to_pylist()))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise MethodInputError(f"{len(missing)} scored example(s) are not in the pool table, e.g. {missing[:5]}")
    return [by_id[i] for i in ids]


def lineage_json(params: dict) -> str:
    return json.dumps(params, sort_keys=True)
