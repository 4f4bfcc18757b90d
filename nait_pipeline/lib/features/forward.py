"""The forward feature kind: one pass per pool and in-domain example (``pool_activations`` per shard,
``target_activations`` per capability), read lazily shard by shard; and the template prefix NAIT-C
removes from it (``template_prefix``, one forward of the constant prefix).

A store file is named by what it was computed from: model, template, featurizer identity (batching
excluded) and the input version (the hash of its rows' ids and texts). :func:`featurize_into` keeps a
file whose identity matches and computes only the others, so a killed backfill resumes where it stopped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.features.feature_store import CODES_SUFFIX, PoolStore, write_features
from nait_pipeline.lib.features.featurize import FeaturizerSpec, featurize
from nait_pipeline.lib.io.hashing import sha256_json, sha256_lines
from nait_pipeline.lib.features.kinds import CAPABILITY, SHARD, FeatureAsset, FeatureKind, MethodInputError
from nait_pipeline.lib.io.lake import read_metadata, read_schema, read_table
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import EXAMPLE_COLUMNS, PoolView, shard_input_version
from nait_pipeline.lib.io.storage import PublishConflict
from nait_pipeline.lib.models.model_io import ModelInfo

SUMMARY_COLUMNS = ["example_id", "n_tokens", "truncated", "response_loss"]  # what a run's metadata reports
POOL_ASSET = FeatureAsset("pool_activations", SHARD)
TARGET_ASSET = FeatureAsset("target_activations", CAPABILITY)


def require_store_columns(path, needed: Sequence[str], what: str) -> None:
    """Fail naming the asset to materialize when a store lacks a feature a method reads."""
    names = set(read_schema(path).names)
    missing = [n for n in needed if n not in names and f"{n}{CODES_SUFFIX}" not in names]  # or quantized
    if missing:
        raise MethodInputError(f"{what} needs feature(s) {missing}, which {path.name} does not hold: "
                               f"re-materialize {POOL_ASSET.name} / {TARGET_ASSET.name} with the current featurizer")


def read_pool_store(layout: LakeLayout, vectors: Sequence[str], scalars: Sequence[str] = (),
                    needed_by: str = "this method") -> tuple[PoolStore, str]:
    """The stored forward features of every shard of the current pool, and the pool version."""
    pool = PoolView.open(layout)
    paths = [layout.pool_activations(s) for s in pool.shards]
    unusable = pool.stale_shards(layout.pool_activations)  # missing, or of other texts
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
    return PoolStore(paths, scalars=scalars), pool.version


def store_identity(model: ModelInfo, spec: FeaturizerSpec, input_version: str) -> dict:
    return {"model_id": model.model_id, "template_hash": model.template_hash, "featurizer": spec.identity(),
            "input_version": input_version}


def shard_rows(layout: LakeLayout, shard: str, texts: bool = True) -> tuple[list[dict], list[str], str]:
    """A pool shard's kept rows, their ids and the input version every store of the shard records
    (``texts=False``: the rows carry only ids and content hashes, enough to check a store)."""
    view = PoolView.open(layout)
    columns = ["example_id", *(EXAMPLE_COLUMNS if texts else ()), "content_hash"]
    rows = view.kept(columns, shard=shard).to_pylist()
    if not rows:
        raise ValueError(f"shard {shard!r} has no rows in {view.path} (pool version {view.version}): "
                         "re-materialize it_pool")
    ids = [r["example_id"] for r in rows]
    return rows, ids, shard_input_version(ids, [r["content_hash"] for r in rows])


def target_rows(targets: list[dict]) -> tuple[list[dict], list[str], str]:
    """Target rows rendered like pool rows (prompt as instruction, reference answer as output), their ids
    and input version."""
    rows = [{"instruction": r["prompt"], "input": "", "output": r["answer"]} for r in targets]
    ids = [r["example_id"] for r in targets]
    return rows, ids, sha256_lines(f"{r['example_id']}\t{r['prompt']}\t{r['answer']}" for r in targets)[:16]


@dataclass
class StoreRun:
    """One store file, computed or kept: its summary columns, version and the featurizer's stats."""

    path: Path
    version: str
    reused: bool
    table: pa.Table  # example_id, n_tokens, truncated, response_loss
    stats: dict = field(default_factory=dict)


def featurize_into(destination: Path, model: ModelInfo, rows: Sequence[dict], ids: Sequence[str], spec: FeaturizerSpec,
                   input_version: str, load_model: Callable[[], tuple[object, object]],
                   progress: Callable[[int, int, int], None] | None = None) -> StoreRun:
    """Featurize ``rows`` into ``destination`` unless a store of the same identity is already there
    (``load_model() -> (model, template)`` is only called when something must be computed)."""
    identity = store_identity(model, spec, input_version)
    version = sha256_json(identity)[:16]
    if destination.exists() and read_metadata(destination).get("store_version") == version:
        return StoreRun(destination, version, True, read_table(destination, columns=SUMMARY_COLUMNS))
    lm, template = load_model()
    started = time.perf_counter()
    features = featurize(lm, template, rows, spec, ids, progress=progress)
    try:
        # Target sets (a few hundred rows, read whole) keep the float width; pool shards take the codes.
        bits = 0 if spec.keep_last_token else spec.reduction.bits
        write_features(destination, list(ids), features, {**identity, "store_version": version,
                                                          "stats": features.stats}, quantize_bits=bits)
    except PublishConflict:
        # Another run published this shard meanwhile: the same store is as good as ours, another one is not.
        if read_metadata(destination).get("store_version") != version:
            raise
    stats = {**features.stats, "wall_seconds": round(time.perf_counter() - started, 3)}
    return StoreRun(destination, version, False, read_table(destination, columns=SUMMARY_COLUMNS), stats)


@functools.lru_cache(maxsize=2)
def cached_model(model_path: str, dtype: str, device: str):
    """One model per process: a run's shard steps, and a Ray worker's shards, load it once."""
    from nait_pipeline.lib.models import model_io
    from nait_pipeline.lib.models.template import ChatTemplate

    model = model_io.load_causal_lm(Path(model_path), dtype=dtype, device=device)
    return model, ChatTemplate(model_io.load_tokenizer(Path(model_path)))


def _cost_files(layout: LakeLayout, capabilities: Sequence[str]):
    return ([layout.pool_activations(s) for s in PoolView.open(layout).shards],
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
