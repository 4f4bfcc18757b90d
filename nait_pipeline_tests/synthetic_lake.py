"""A small lake written from seeded random arrays, in the layout the assets write, so every method's
scoring and selection can be tested in milliseconds without a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.data.conversation import Conversation, messages_json
from nait_pipeline.lib.data.ingest import POOL_SCHEMA
from nait_pipeline.lib.features.feature_store import write_features
from nait_pipeline.lib.io.pool_view import shard_input_version
from nait_pipeline.lib.features.featurize import Features
from nait_pipeline.lib.io.contract import CONTAMINATION_SCHEMA, QUARANTINE_SCHEMA
from nait_pipeline.lib.io.hashing import sha256_lines
from nait_pipeline.lib.io.lake import atomic_path, write_json, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.models.model_io import ModelInfo

CAPABILITIES = ("math", "code", "reasoning", "knowledge", "multilingual")
SOURCES = ("alpaca_cleaned", "flan_cot/gsm8k", "code_alpaca_2k")  # two in-domain-like (oracle_source)
IDENTITY = {"model_id": "tiny@0", "template_hash": "t0", "featurizer": {"spec": "synthetic"}}


def model_info(layers: int = 3, width: int = 8) -> ModelInfo:
    """The base model record the synthetic stores claim to come from (no weights behind it)."""
    return ModelInfo(model_id=IDENTITY["model_id"], path="unused", architecture="synthetic", num_layers=layers,
                     hidden_size=width, vocab_size=0, template_hash=IDENTITY["template_hash"], has_chat_template=True)


def _features(rng: np.random.Generator, n: int, layers: int, width: int, shift: float = 0.0,
              last_token: bool = False) -> Features:
    lengths = rng.integers(5, 60, n).astype(np.int32)
    return Features(
        layer_mean=(rng.normal(size=(n, layers, width)) + shift).astype(np.float32),
        first_token=rng.normal(size=(n, layers, width)).astype(np.float32),
        last_token=rng.normal(size=(n, layers, width)).astype(np.float32) if last_token else None,
        rds_embedding=(rng.normal(size=(n, width)) + shift).astype(np.float32),
        response_loss=rng.uniform(0.5, 3.0, n),
        n_tokens=lengths + 10,
        n_response_tokens=lengths,
        full_length=lengths + 10,
        truncated=np.zeros(n, bool),
        stats={"seconds": 1.5, "tokens": int(lengths.sum() + 10 * n)},
    )


def _texts(k: int, response_words: int) -> dict:
    if k % 3 != 1:
        return {"instruction": f"instruction {k}", "input": "", "output": "word " * response_words, "messages": None}
    first = response_words // 2
    turns = [{"role": "system", "content": "Answer in words."}, {"role": "user", "content": f"instruction {k}"},
             {"role": "assistant", "content": "word " * first}, {"role": "user", "content": "and then?"},
             {"role": "assistant", "content": "word " * (response_words - first)}]
    return {**Conversation(tuple(turns)).text_view(), "messages": messages_json(turns)}


def build(root: Path, n_pool: int = 40, shard_size: int = 16, layers: int = 3, width: int = 8,
          n_targets: int = 6, seed: int = 0, interleaved: bool = False) -> LakeLayout:
    """``interleaved``: row i goes to shard i mod the shard count, so no shard is a run of ids (as rows landing
    over time are not); otherwise shards are consecutive runs of ``shard_size`` ids."""
    rng = np.random.default_rng(seed)
    layout = LakeLayout(root)
    ids = [f"pool-{i:06d}" for i in range(n_pool)]
    n_shards = -(-n_pool // shard_size)
    shards = [f"p0-s{(i % n_shards if interleaved else i // shard_size):04d}" for i in range(n_pool)]
    features = _features(rng, n_pool, layers, width)
    features.response_loss[7] = np.nan  # truncation left this row no response token: it has no perplexity
    # Response texts as long as the stored response token counts, as in a real store; every third row is a
    # two-exchange conversation (the pool holds its turns and their text view), so every method's contract
    # is kept over a pool of triples and conversations.
    rows = [dict(example_id=i, pool="pool", source=SOURCES[k % len(SOURCES)], file="pool.parquet", row_index=k,
                 **_texts(k, int(features.n_response_tokens[k])), content_hash=f"h{k}", status="kept",
                 duplicate_of=None, shard=s)
            for k, (i, s) in enumerate(zip(ids, shards))]
    pool_version = sha256_lines(f"{r['example_id']}\t{r['content_hash']}\t{r['shard']}" for r in rows)[:16]
    write_parquet(pa.Table.from_pylist(rows, schema=POOL_SCHEMA), layout.pool_examples, {"pool_version": pool_version})
    # Checked against the test items and found clean (a test that needs contaminated rows writes its own).
    write_parquet(CONTAMINATION_SCHEMA.empty_table(), layout.pool_contamination,
                  {"contamination_version": "clean0", "pool_version": pool_version})
    write_parquet(QUARANTINE_SCHEMA.empty_table(), layout.pool_quarantine)  # the warehouse binds every pool table
    write_parquet(pa.table({"file": ["pool.parquet"], "rows_read": [n_pool], "sha256": ["s0"]}), layout.pool_files)
    for shard in sorted(set(shards)):
        index = [k for k, s in enumerate(shards) if s == shard]
        part = Features(**{name: (value[index] if isinstance(value, np.ndarray) else value)
                           for name, value in features.__dict__.items()})
        write_features(layout.pool_activations(shard), [ids[k] for k in index], part,
                       {**IDENTITY, "store_version": f"pool-{shard}", "stats": part.stats,
                        "input_version": shard_input_version([ids[k] for k in index], [f"h{k}" for k in index])})
    for position, capability in enumerate(CAPABILITIES):
        target = _features(rng, n_targets, layers, width, shift=0.5 * (position + 1), last_token=True)
        write_features(layout.target_activations(capability), [f"{capability}-{i}" for i in range(n_targets)],
                       target, {**IDENTITY, "store_version": f"target-{capability}", "stats": target.stats})
    write_json(model_info(layers, width).as_dict(), layout.model_record)
    _selector_store(rng, layout, ids[: n_pool * 3 // 4], pool_version)
    _template_prefix(rng, layout, layers, width)
    _gradient_store(rng, layout, ids, shards, n_targets)
    return layout


def _template_prefix(rng: np.random.Generator, layout: LakeLayout, layers: int, width: int) -> None:
    """A 4-token prefix whose first state has one massive dimension per layer (NAIT-C masks it)."""
    first = rng.normal(size=(layers, width))
    first[:, 0] = 5000.0
    sums = first + rng.normal(size=(layers, width))
    write_parquet(pa.table({"layer": np.arange(1, layers + 1), "prefix_sum": list(sums.astype(np.float32)),
                            "first_state": list(first.astype(np.float32))}), layout.template_prefix,
                  {"prefix_tokens": 4, "prefix_text": "<s>", "prefix_version": "prefix0",
                   "model_id": IDENTITY["model_id"], "template_hash": IDENTITY["template_hash"]})


def _selector_store(rng: np.random.Generator, layout: LakeLayout, ids: list[str], pool_version: str) -> None:
    """LP's trajectories (P0..P3) and clusters for a slice of the pool, with the edge cases named in
    lp_math: a row without a response, a zero denominator, perplexity rising in epoch 1."""
    n = len(ids)
    p0 = rng.uniform(2.0, 20.0, n)
    drops = rng.uniform(0.0, 0.4, (n, 3)).cumsum(1)
    p = np.column_stack([p0, p0[:, None] * (1 - drops / 1.5)])
    p[3, 1:] = p[3, 0]  # P0 == PE: LP(1) is 0 by the official rule
    p[5, 1] = p[5, 0] * 1.2  # rose in epoch 1: negative LP
    no_response = np.zeros(n, bool)
    no_response[9] = True
    p[9] = 0.0
    store = {"trajectory_version": "1", "selector_model_id": "selector@0", "template_hash": "t0", "rows": "r",
             "config": {"epochs": 3}, "store_version": "traj0", "pool_version": pool_version}
    columns = {"example_id": ids, **{f"p{e}": p[:, e] for e in range(4)},
               "response_tokens": np.where(no_response, 0, 12), "no_response": no_response}
    write_parquet(pa.table(columns), layout.selector_trajectories, store)
    write_parquet(pa.table({"example_id": ids, "cluster": np.arange(n) % 2, "distance_to_centre": np.ones(n)}),
                  layout.selector_clusters, {"clusters_version": "c0", "n_clusters": 2, "trajectories_version": "traj0"})


def _gradient_store(rng: np.random.Generator, layout: LakeLayout, ids: list[str], shards: list[str], n_targets: int,
                    dim: int = 16) -> None:
    """The gradient methods' store: a 2-checkpoint warmup record, unit pool and target gradient rows (pool row 7
    has no response token: a zero gradient), target rows in two tasks per capability, and G2IS's graph."""
    from nait_pipeline.lib.features import gradients as gr
    from nait_pipeline.lib.io.contract import TARGET_SCHEMA
    from nait_pipeline.lib.methods.gradients import g2is_math
    from nait_pipeline.lib.features.gradient_store import read_gradient_pool

    epochs, rates = [1, 2], [2e-5, 1e-5]
    write_json({"adapter_version": "adapter0", "model_id": IDENTITY["model_id"], "model_path": "unused",
                "template_hash": IDENTITY["template_hash"], "config": gr.WarmupConfig(epochs=2).as_dict(),
                "warmup_rows": 4, "checkpoints": [{"epoch": e, "mean_lr": r} for e, r in zip(epochs, rates)],
                "weights": [r / sum(rates) for r in rates]}, layout.warmup_record)
    projection = {"kind": "rademacher", "seed": 0, "dim": dim, "num_params": 1000, "version": "1"}

    def unit(rows: np.ndarray) -> np.ndarray:
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def write(path, row_ids, vectors, preconditioning, epoch, input_version):
        zero = ~vectors.any(axis=1)
        identity = gr.store_identity(IDENTITY["model_id"], IDENTITY["template_hash"], "adapter0", epoch, projection,
                                     preconditioning, 64, input_version)
        features = gr.GradientFeatures(ids=row_ids, vectors=vectors, zero_gradient=zero,
                                       n_tokens=np.full(len(row_ids), 20), seconds=0.5)
        gr.write_gradient_store(path, features, {**identity, "store_version": gr.store_version(identity),
                                                 "stats": {"seconds": 0.5, "tokens": 20 * len(row_ids)}})

    base = unit(rng.normal(size=(len(ids), dim)))
    for epoch in epochs:
        vectors = unit(base + rng.normal(0, 0.3, size=base.shape))
        vectors[7] = 0.0
        for shard in sorted(set(shards)):
            index = [k for k, s in enumerate(shards) if s == shard]
            write(layout.pool_gradients(shard, epoch), [ids[k] for k in index], vectors[index], "adam", epoch,
                  shard_input_version([ids[k] for k in index], [f"h{k}" for k in index]))
    for position, capability in enumerate(CAPABILITIES):
        target_ids = [f"{capability}-{i}" for i in range(n_targets)]
        write_parquet(pa.Table.from_pylist([dict(
            example_id=t, capability=capability, task=f"{capability}/task{i % 2}", split="dev", file="synthetic",
            prompt=f"prompt {t}", answer=f"answer {t}", extra_json="{}") for i, t in enumerate(target_ids)],
            schema=TARGET_SCHEMA), layout.target_selection(capability))
        centre = base[position * 5 : position * 5 + 3].mean(axis=0)
        for epoch in epochs:
            write(layout.target_gradients(capability, epoch), target_ids,
                  unit(centre + rng.normal(0, 0.5, size=(n_targets, dim))), "sgd", epoch, f"targets-{capability}")
    pool, _ = read_gradient_pool(layout)
    with atomic_path(layout.gradient_graph, ".npz") as tmp, open(tmp, "wb") as handle:
        features = pool.combined()
        np.savez(handle, neighbours=g2is_math.knn_graph(features, 8), pool_ids=np.array(pool.ids),
                 features_version=np.array(pool.metadata["features_version"]), kind=np.array("exact"))
