"""The gradient feature kind (LESS, BIDS and G2IS read it): the warmup's checkpoints, then per-example
projected LoRA gradients of every pool shard and target set at each checkpoint
(:mod:`~nait_pipeline.lib.features.gradients` computes them). Read here, checked to be of the current
pool rows and of the current warmup adapter; priced from the stats every store file records."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nait_pipeline.lib.features import gradients as gr
from nait_pipeline.lib.features.kinds import CAPABILITY, SHARD, FeatureAsset, FeatureKind, MethodInputError
from nait_pipeline.lib.features.projection import ProjectionSpec, RademacherProjector, check_same_projection
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import read_metadata, read_table, read_table_and_metadata
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView

WARMUP_ASSET = FeatureAsset("warmup_adapter")
POOL_ASSET = FeatureAsset("pool_gradients", SHARD)
TARGET_ASSET = FeatureAsset("target_gradients", CAPABILITY)


def read_warmup(layout: LakeLayout) -> dict:
    if not layout.warmup_record.exists():
        raise FileNotFoundError(f"{layout.warmup_record} is missing: materialize {WARMUP_ASSET.name} first")
    return json.loads(layout.warmup_record.read_text())


def combined_features(per_checkpoint: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """[n, C * dim] float32: ``concat_c sqrt(w_c) * f_c`` (dot products = the weighted cosine sum)."""
    if len(per_checkpoint) != len(weights):
        raise MethodInputError(f"{len(per_checkpoint)} checkpoint matrices but {len(weights)} weights")
    return np.concatenate([np.sqrt(w, dtype=np.float32) * f.astype(np.float32)
                           for f, w in zip(per_checkpoint, weights)], axis=1)


@dataclass
class GradientPool:
    """The pool's gradient store over every warmup checkpoint, opened lazily: ids (in id order, as every scorer
    writes its rows), the zero-gradient flags, the checkpoint weights and the identity at once; the vectors
    shard by shard (:meth:`blocks`). At 1M rows, 1,024-d and 4 checkpoints the vectors are 16 GB: LESS's scorer
    streams them into its [N, m] matrix, and only G2IS's graph and walk hold them whole (:meth:`combined`)."""

    ids: list[str]
    weights: list[float]
    zero_gradient: np.ndarray  # [N] bool
    metadata: dict
    shard_paths: list[list[Path]]  # per shard, its store at each checkpoint
    shard_positions: list[np.ndarray]  # per shard, the index in ``ids`` of each of its rows
    dim: int

    def blocks(self) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """Per shard: the positions of its rows in ``ids`` and its [n, dim] float32 vectors at each checkpoint."""
        for paths, positions in zip(self.shard_paths, self.shard_positions):
            yield positions, [self._vectors(path, positions) for path in paths]

    def checkpoint(self, number: int) -> np.ndarray:
        """[N, dim] float32 at one checkpoint (the dump writes them one at a time)."""
        out = np.empty((len(self.ids), self.dim), np.float32)
        for paths, positions in zip(self.shard_paths, self.shard_positions):
            out[positions] = self._vectors(paths[number], positions)
        return out

    def combined(self) -> np.ndarray:
        """[N, C * dim] float32 ``concat_c sqrt(w_c) * f_c`` (G2IS), filled shard by shard into one array."""
        out = np.empty((len(self.ids), len(self.weights) * self.dim), np.float32)
        for positions, per_checkpoint in self.blocks():
            out[positions] = combined_features(per_checkpoint, self.weights)
        return out

    def _vectors(self, path: Path, positions: np.ndarray) -> np.ndarray:
        stored = gr.read_gradient_stores([path])
        if [self.ids[p] for p in positions] != stored.ids:
            raise MethodInputError(f"{path} holds other rows than when the store was opened (rewritten meanwhile?): "
                                   "rerun")
        return stored.vectors


def read_gradient_pool(layout: LakeLayout, vectors: Sequence[str] = (), scalars: Sequence[str] = (),
                       needed_by: str = "") -> tuple[GradientPool, str]:
    """The pool's gradient store at every warmup checkpoint, opened (ids, flags, identity; the vectors on
    demand) and checked to be of the current pool rows, of the current warmup adapter and of one model,
    template and projection (the store has one vector per row: ``vectors`` is unused)."""
    warmup = read_warmup(layout)
    pool = PoolView.open(layout)
    epochs = [checkpoint["epoch"] for checkpoint in warmup["checkpoints"]]
    for epoch in epochs:
        stale = pool.stale_shards(lambda shard, e=epoch: layout.pool_gradients(shard, e))
        if stale:
            raise MethodInputError(f"{POOL_ASSET.name} is missing or out of date for shard(s) {stale[:5]} at "
                                   f"checkpoint {epoch}: materialize {POOL_ASSET.name} for them")
    shard_paths = [[layout.pool_gradients(shard, epoch) for epoch in epochs] for shard in pool.shards]
    if not shard_paths:
        raise MethodInputError(f"the pool has no shard: nothing for {needed_by or 'the gradient methods'} to read")
    first = read_metadata(shard_paths[0][0])
    ids, zero, sizes, versions = [], [], [], [[] for _ in epochs]
    for paths in shard_paths:
        shard_ids, flags = None, None
        for number, path in enumerate(paths):
            table, meta = read_table_and_metadata(path, ["example_id", "zero_gradient"])
            if meta["adapter_version"] != warmup["adapter_version"]:
                raise MethodInputError(f"{POOL_ASSET.name} at checkpoint {epochs[number]} were computed with another "
                                       f"warmup adapter ({path}): re-materialize {POOL_ASSET.name}")
            check_same_projection(meta["projection"], first["projection"], POOL_ASSET.name)
            if any(meta.get(k) != first.get(k) for k in ("model_id", "template_hash", "preconditioning", "dim")):
                raise MethodInputError(f"{path} was made with another model, template or preconditioning than "
                                       f"{shard_paths[0][0]}: re-materialize {POOL_ASSET.name}")
            versions[number].append(meta["store_version"])
            these = table.column("example_id").to_pylist()
            zero_here = table.column("zero_gradient").to_numpy(zero_copy_only=False)
            if shard_ids is None:
                shard_ids, flags = these, zero_here
            elif these != shard_ids:
                raise MethodInputError(f"{POOL_ASSET.name} of different checkpoints cover different rows: {path} "
                                       f"and {paths[0]}")
            else:
                flags = flags | zero_here
        ids += shard_ids
        zero.append(flags)
        sizes.append(len(shard_ids))
    # Rows in id order, as every scorer writes them; each shard's rows go to their places.
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    position = np.empty(len(ids), np.int64)
    position[order] = np.arange(len(ids))
    bounds = np.cumsum([0, *sizes])
    return GradientPool(
        ids=[ids[i] for i in order], weights=list(warmup["weights"]), zero_gradient=np.concatenate(zero)[order],
        metadata={"model_id": first["model_id"], "template_hash": first["template_hash"],
                  "projection": first["projection"], "adapter_version": warmup["adapter_version"],
                  "features_version": sha256_json([sha256_json(v) for v in versions])[:16]},
        shard_paths=shard_paths, shard_positions=[position[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        dim=int(first["dim"]),
    ), pool.version


@dataclass
class TargetGradients:
    ids: list[str]
    subtasks: list[str]
    checkpoints: list[np.ndarray]
    projection: dict


def load_target_gradients(layout: LakeLayout, capability: str, params=None) -> tuple[TargetGradients, dict]:
    """A capability's target gradients at every checkpoint, columns grouped by subtask (the official
    contiguous layout when the subtasks have equal sizes)."""
    warmup = read_warmup(layout)
    paths = [layout.target_gradients(capability, c["epoch"]) for c in warmup["checkpoints"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: materialize {TARGET_ASSET.name}[{capability}] first")
    stored = [gr.read_gradient_stores([p]) for p in paths]
    for s in stored:
        if s.metadata["adapter_version"] != warmup["adapter_version"]:
            raise MethodInputError(f"{TARGET_ASSET.name}[{capability}] were computed with another warmup adapter: "
                                   "re-materialize them")
    task_of = dict(zip(*(read_table(layout.target_selection(capability), columns=["example_id", "task"])
                         .column(c).to_pylist() for c in ("example_id", "task"))))
    ids = stored[0].ids
    order = sorted(range(len(ids)), key=lambda i: (task_of.get(ids[i], capability), ids[i]))
    meta = {"model_id": stored[0].metadata["model_id"],
            "version": sha256_json([read_metadata(p)["store_version"] for p in paths])[:16]}
    return TargetGradients(ids=[ids[i] for i in order], subtasks=[task_of.get(ids[i], capability) for i in order],
                           checkpoints=[s.vectors[order] for s in stored],
                           projection=stored[0].metadata["projection"]), meta


def featurize_checkpoints(layout: LakeLayout, rows: Sequence[dict], ids: Sequence[str], input_version: str,
                          preconditioning: str, destination: Callable[[int], Path], *, dim: int, seed: int,
                          max_length: int, batch_tokens: int, batch_rows: int | None, device: str,
                          progress: Callable[[str], Callable[[int, int], None] | None] = lambda label: None
                          ) -> list[dict]:
    """The rows' gradient features at every warmup checkpoint, one store per checkpoint at
    ``destination(epoch)``; a checkpoint whose store already matches (adapter, projection, rows) is kept, so
    a killed run resumes per checkpoint. Returns each checkpoint's stats, with ``reused``."""
    from nait_pipeline.lib.models.model_io import load_tokenizer
    from nait_pipeline.lib.models.template import ChatTemplate

    warmup = read_warmup(layout)
    params = gr.WarmupConfig(**warmup["config"])
    model_path = Path(warmup["model_path"])
    template = ChatTemplate(load_tokenizer(model_path))
    done, projector = [], None
    for checkpoint in gr.read_checkpoints(layout.warmup_run, params.epochs):
        path = destination(checkpoint.epoch)
        model = None
        if projector is None:  # the projection's input width is the adapter's parameter count
            model, exp_avg, exp_avg_sq = gr.load_checkpoint_model(model_path, params, checkpoint, device)
            projector = RademacherProjector(ProjectionSpec(gr.count_parameters(model), dim, seed))
        wanted = gr.store_identity(warmup["model_id"], warmup["template_hash"], warmup["adapter_version"],
                                   checkpoint.epoch, projector.spec.identity, preconditioning, max_length,
                                   input_version)
        if path.exists() and read_metadata(path).get("store_version") == gr.store_version(wanted):
            done.append({"checkpoint": checkpoint.epoch, "reused": True, **read_metadata(path)["stats"]})
            continue
        if model is None:
            model, exp_avg, exp_avg_sq = gr.load_checkpoint_model(model_path, params, checkpoint, device)
        features = gr.gradient_features(model, exp_avg, exp_avg_sq, template, rows, ids, max_length, projector,
                                        preconditioning, batch_tokens, batch_rows=batch_rows,
                                        progress=progress(f"gradients {path.stem} ckpt{checkpoint.epoch}"),
                                        device=device)
        stats = {"rows": len(ids), "seconds": round(features.seconds, 2), "tokens": int(features.n_tokens.sum()),
                 "rows_per_s": round(len(ids) / features.seconds, 3) if features.seconds else None,
                 "zero_gradient": int(features.zero_gradient.sum())}
        gr.write_gradient_store(path, features, {**wanted, "store_version": gr.store_version(wanted),
                                                 "mean_lr": checkpoint.mean_lr, "stats": stats})
        done.append({"checkpoint": checkpoint.epoch, "reused": False, **stats})
    return done


def _cost_files(layout: LakeLayout, capabilities: Sequence[str]):
    """Every shard and target set at every checkpoint (the warmup itself records no stats)."""
    epochs = [c["epoch"] for c in read_warmup(layout)["checkpoints"]]
    return ([layout.pool_gradients(s, e) for s in PoolView.open(layout).shards for e in epochs],
            [layout.target_gradients(c, e) for c in capabilities for e in epochs])


GRADIENTS = FeatureKind(
    name="gradients",
    description="a LoRA warmup on a seeded share of the pool, then per-example LoRA gradients of the response "
                "loss at every checkpoint (Adam-preconditioned for pool rows), Rademacher-projected and normalised",
    pool_assets=(WARMUP_ASSET, POOL_ASSET),
    target_assets=(TARGET_ASSET,),
    read_pool=read_gradient_pool,
    cost_files=_cost_files,
    on_demand=True,
)

GRADIENT_GRAPH = FeatureKind(
    name="gradient_graph",
    description="G2IS's kNN graph over the pool's combined gradient features (exact, or FAISS IVF)",
    pool_assets=(FeatureAsset("gradient_graph"),),
    on_demand=True,
)
