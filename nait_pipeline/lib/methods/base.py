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

from nait_pipeline.lib.features.feature_store import row_blocks
from nait_pipeline.lib.features.kinds import FeatureKind, MethodInputError
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView

ALL = "all"  # the capability label of a subset selected for every capability at once


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
    kind: FeatureKind  # the pool features it reads; its reader's metadata "features_version" joins the score version
    score: Callable[..., Scored]  # score(pool, target, params) -> Scored
    pool_vectors: tuple[str, ...] = ()  # stored per-example vectors read from the kind's pool side
    pool_scalars: tuple[str, ...] = ()
    targeted: bool = True  # False: one score for the whole pool (perplexity, length)
    load_target: Callable[..., tuple[object, dict]] | None = None  # (layout, capability, params) -> (target, meta)
    # Assets the target model is read from; None: the kind's target side (NAIT reads its directions instead).
    target_assets: tuple[str, ...] | None = None
    also_reads: tuple[FeatureKind, ...] = ()  # other kinds its target model or score reads (NAIT-C: the prefix)
    version_key: str = "target"  # the key the target version is hashed under (NAIT keeps "directions")
    code_version: str = "1"
    group_columns: tuple[str, ...] = ()  # score columns a policy reads as row groups (LP: cluster)
    # dump_inputs(dump, layout, params, capabilities) -> notes: the arrays a dump of one of its subsets holds, in
    # the formats the official code reads; None: the generic dump of the vectors and scalars it reads.
    dump_inputs: Callable[..., dict] | None = None

    @property
    def kinds(self) -> tuple[FeatureKind, ...]:
        return (self.kind, *self.also_reads)

    @property
    def target_asset_names(self) -> tuple[str, ...]:
        if self.target_assets is not None:
            return self.target_assets
        return tuple(asset.name for asset in self.kind.target_assets)


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
    groups: dict[str, list] = field(default_factory=dict)  # "source" -> [N] labels; "output_chars" for random
    matrix_loader: Callable[[str], tuple[np.ndarray, list[str]]] | None = None
    policy_reads: tuple[FeatureKind, ...] = ()  # the kinds pool_features may read (the method's policy_reads)
    # Pool rows left out of the candidates (contaminated ones, by default): stores read by a policy still
    # hold them; ``positions`` maps such a store's rows onto ``ids``.
    excluded: frozenset[str] = frozenset()

    def restricted(self, drop: set[str]) -> SelectionInput:
        """The same input without the rows ``drop`` names: ids, scores, groups and matrices filtered alike."""
        keep = np.array([i not in drop for i in self.ids], bool)
        if keep.all():
            return self
        loader = self.matrix_loader

        def matrix(capability: str) -> tuple[np.ndarray, list[str]]:
            values, target_ids = loader(capability)
            return values[keep], target_ids

        return dataclasses.replace(
            self, ids=[i for i, k in zip(self.ids, keep) if k], scores={c: s[keep] for c, s in self.scores.items()},
            unscored=self.unscored[keep], groups={n: [v for v, k in zip(g, keep) if k] for n, g in self.groups.items()},
            matrix_loader=matrix if loader is not None else None,
            excluded=self.excluded | {i for i, k in zip(self.ids, keep) if not k})

    def positions(self, store_ids: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
        """For a store over the pool (``store_ids``): the store row of each of ``ids``, and which store rows
        are not candidates. A store covering other rows than the candidates and the excluded is refused."""
        row = {example_id: i for i, example_id in enumerate(store_ids)}
        missing = [i for i in self.ids if i not in row]
        if missing or len(row) != len(self.ids) + len(self.excluded & row.keys()) or \
                len(self.excluded & row.keys()) != len(self.excluded):
            raise MethodInputError(f"{what} covers other rows than the selection's candidates (e.g. missing "
                                   f"{missing[:5]}): re-materialize it")
        candidate = np.zeros(len(store_ids), bool)
        index = np.array([row[i] for i in self.ids], np.int64)
        candidate[index] = True
        return index, ~candidate

    def matrix(self, capability: str) -> tuple[np.ndarray, list[str]]:
        if self.matrix_loader is None:
            raise MethodInputError("this method's scorer keeps no per-target score matrix")
        return self.matrix_loader(capability)

    def pool_vectors(self, kind: FeatureKind, name: str, needed_by: str) -> np.ndarray:
        """[N, d] float32 vectors ``name`` of a kind the method's policy reads, rows aligned with ``ids``;
        the kind's store must cover exactly the rows selected from."""
        if kind not in self.policy_reads:
            raise MethodInputError(f"{needed_by} reads the {kind.name} feature kind but does not list it in its "
                                   "policy_reads, so its assets would not be upstream of it")
        store, pool_version = kind.read_pool(self.layout, (name,), (), needed_by)
        if pool_version != self.pool_version:
            raise MethodInputError(f"the {kind.name} store is of pool version {pool_version}, the selection of "
                                   f"{self.pool_version}: re-materialize it")
        index, _ = self.positions(store.ids, f"the {kind.name} store ({', '.join(kind.asset_names())}) "
                                             f"read by {needed_by}")
        # Shard by shard into one array in ``ids`` order: one float32 copy of the pool, not the store's
        # concatenation plus its reordered copy.
        position = np.full(len(store.ids), -1, np.int64)
        position[index] = np.arange(len(index))
        out: np.ndarray | None = None
        for rows, block in row_blocks(store, name):
            if out is None:
                out = np.empty((len(index), *block.shape[1:]), np.float32)
            to = position[rows]
            keep = to >= 0
            out[to[keep]] = block[keep]
        if out is None:
            raise MethodInputError(f"the {kind.name} store read by {needed_by} holds no rows")
        return out


@dataclass(frozen=True)
class SelectionOptions:
    """Rules the runner applies to every method's candidates, whatever its policy."""

    exclude_contaminated: bool = True
    """Leave out pool rows that contain a test item (`pool_contamination`); false keeps them and the
    subset's diagnostics count the ones taken."""
    max_per_cluster: int = 0
    """Keep at most this many rows of each near-duplicate group (`pool_near_duplicates`) among the
    candidates, the first by example id; 0 keeps them all."""


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
    # Feature kinds the policy reads beside the scores (G2IS: the gradient graph; k-center: the forward store),
    # and the stored vectors it reads from them (``SelectionInput.pool_features``).
    policy_reads: tuple[FeatureKind, ...] = ()
    policy_vectors: tuple[str, ...] = ()
    # dump(layout, subset_version, out_dir, template) -> manifest path: a method's own dump (NAIT's); None: the
    # scorer's dump_inputs or the generic one. dump_extra(dump, layout, params, capabilities) -> notes: added
    # to its scorer's dump (G2IS's walk inputs on the gradient store).
    dump: Callable[..., Path] | None = None
    dump_extra: Callable[..., dict] | None = None

    @property
    def kinds(self) -> tuple[FeatureKind, ...]:
        """Every feature kind the method reads, through its scorer or its policy, once each."""
        return tuple(dict.fromkeys((*(self.scorer.kinds if self.scorer else ()), *self.policy_reads)))

    @property
    def on_demand(self) -> bool:
        return any(kind.on_demand for kind in self.kinds)


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


def pool_groups(layout: LakeLayout, ids: Sequence[str], column: str = "source") -> list[str]:
    """A pool column (the source, by default) aligned with ``ids``."""
    try:
        return PoolView.open(layout).aligned(ids, column)
    except KeyError as exc:
        raise MethodInputError(f"scored example(s) are not in the pool table: {exc.args[0]}") from None


def lineage_json(params: dict) -> str:
    return json.dumps(params, sort_keys=True)
