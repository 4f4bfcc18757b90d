"""Export subsets for training frameworks, and dump everything a selection consumed and produced.

A dump holds plain .npy/.json/.jsonl files and a ``manifest.json`` that says what each one is, so a
selection can be re-run or audited with NumPy alone, outside the pipeline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.lib.features.feature_store import read_features
from nait_pipeline.lib.io.lake import atomic_path, read_metadata, write_json, write_parquet
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.models.template import user_message

EXPORT_FORMATS = ("alpaca", "chat", "parquet")


SUBSET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ChangedSubsetError(ValueError):
    """The pool no longer holds a subset's rows as they were when it was selected."""


def subset_rows(layout: LakeLayout, subset_version: str, allow_changed: bool = False) -> pa.Table:
    """The subset's rows in rank order, joined with their pool text.

    Refuses (:class:`ChangedSubsetError`) when a selected row left the pool or its text changed since
    the selection, unless ``allow_changed``: an older version must never go out with newer texts."""
    if not SUBSET_NAME.match(subset_version) or subset_version.startswith("."):
        raise ValueError(f"{subset_version!r} is not a subset version name (letters, digits, '-', '_', '.')")
    path = layout.subset(subset_version)
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.parquet") if not p.name.startswith("_"))
        raise FileNotFoundError(f"no subset {subset_version!r}; available: {available}")
    subset = pq.read_table(path).sort_by("rank")
    if "content_hash" not in subset.column_names:  # written before content hashes were recorded
        subset = subset.append_column("content_hash", pa.nulls(len(subset), pa.string()))
    pool = pq.read_table(layout.pool_examples, columns=["example_id", "instruction", "input", "output", "source",
                                                       "content_hash", "status"], filters=[("status", "=", "kept")])
    pool = pool.drop_columns(["status"]).rename_columns(
        ["example_id", "instruction", "input", "output", "source", "pool_content_hash"])
    joined = subset.join(pool, "example_id", join_type="left outer").sort_by("rank")
    rows = joined.select(["example_id", "instruction", "content_hash", "pool_content_hash"]).to_pylist()
    gone = [r["example_id"] for r in rows if r["instruction"] is None]
    changed = [r["example_id"] for r in rows if r["instruction"] is not None and r["content_hash"] is not None
               and r["content_hash"] != r["pool_content_hash"]]
    if gone:
        raise ChangedSubsetError(f"{len(gone)} selected example(s) of {subset_version} are no longer in the pool, "
                                 f"e.g. {gone[:5]}: select again on the current pool")
    if changed and not allow_changed:
        raise ChangedSubsetError(
            f"{len(changed)} selected example(s) of {subset_version} changed text since the selection, e.g. "
            f"{changed[:5]}: select again on the current pool (or export anyway with --allow-changed)")
    return joined.drop_columns(["pool_content_hash"])


def export_subset(layout: LakeLayout, subset_version: str, fmt: str, destination: Path,
                  allow_changed: bool = False) -> int:
    """Write the subset as Alpaca JSONL, chat-messages JSONL or Parquet; returns the row count."""
    rows = subset_rows(layout, subset_version, allow_changed)
    if fmt == "parquet":
        write_parquet(rows.select(["rank", "example_id", "score", "source", "instruction", "input", "output"]),
                      destination, {"subset_version": subset_version})
        return len(rows)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    with atomic_path(destination, ".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows.to_pylist():
            if fmt == "alpaca":
                record = {"id": row["example_id"], "instruction": row["instruction"], "input": row["input"],
                          "output": row["output"]}
            else:
                record = {"id": row["example_id"], "messages": [
                    {"role": "user", "content": user_message(row["instruction"], row["input"])},
                    {"role": "assistant", "content": row["output"]}]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


class _Dump:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: dict[str, dict] = {}
        out_dir.mkdir(parents=True, exist_ok=True)

    def array(self, name: str, values: np.ndarray, description: str) -> None:
        with atomic_path(self.out_dir / name, ".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, values)
        self.files[name] = {"shape": list(values.shape), "dtype": str(values.dtype), "description": description}

    def json(self, name: str, value, description: str) -> None:
        write_json(value, self.out_dir / name)
        self.files[name] = {"description": description}

    def pickle(self, name: str, value, description: str) -> None:
        """For official scripts that read pickles (LP's subset.py); plain lists and dicts only."""
        import pickle

        with atomic_path(self.out_dir / name, ".pkl") as tmp, open(tmp, "wb") as handle:
            pickle.dump(value, handle)
        self.files[name] = {"description": description}

    def jsonl(self, name: str, records: list[dict], description: str) -> None:
        with atomic_path(self.out_dir / name, ".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.files[name] = {"rows": len(records), "description": description}


def dump_nait_selection(layout: LakeLayout, subset_version: str, out_dir: Path, template) -> Path:
    """Dump the arrays behind a NAIT subset: features, directions, scores, ids and rendered texts."""
    lineage = pq.read_table(layout.lineage(subset_version)).to_pylist()[0]
    if lineage["method"] != "nait":
        raise ValueError(f"{subset_version} was made by {lineage['method']!r}; dump supports NAIT subsets")
    params = json.loads(lineage["params_json"])
    capabilities = list(params["score_versions"])
    dump = _Dump(out_dir)

    for capability in capabilities:
        current = read_metadata(layout.scores("nait", capability))["score_version"]
        if params["score_versions"][capability] != current:
            raise ValueError(f"{subset_version} was selected from {capability} score version "
                             f"{params['score_versions'][capability]}, but the lake now holds {current}: "
                             "dump a subset made from the current scores (re-materialize nait_subsets)")
    score_tables = {c: pq.read_table(layout.scores("nait", c)) for c in capabilities}
    pool_ids = score_tables[capabilities[0]].column("example_id").to_pylist()
    shards = layout.kept_shards()
    store = read_features([layout.pool_activations(s) for s in shards], scalars=("n_tokens", "truncated"))
    if store.ids != pool_ids:
        raise ValueError("pool activations no longer match the stored scores: re-materialize nait_scores")
    dump.json("pool_ids.json", pool_ids, "pool example ids; row i of every pool array is this id")
    dump.array("pool_layer_mean.npy", store.vectors["layer_mean"],
               "[N, L, d] token-mean residual stream per decoder layer (as read from the store, float32)")
    for capability in capabilities:
        table = score_tables[capability]
        dump.array(f"scores_{capability}.npy", table.column("score").to_numpy(),
                   f"[N] NAIT score per pool example for {capability}")
        dump.array(f"layer_projections_{capability}.npy",
                   np.stack(table.column("layer_projections").to_numpy(zero_copy_only=False)),
                   f"[N, L] a_l . v_l per layer for {capability}; scores = sum over the layers in params")
        directions = pq.read_table(layout.directions(capability))
        dump.array(f"directions_{capability}.npy",
                   np.stack(directions.column("direction").to_numpy(zero_copy_only=False)).astype(np.float32),
                   f"[L, d] unit direction per layer for {capability} (PC1 of the drift, sign fixed by its mean)")
        dump.array(f"explained_variance_{capability}.npy",
                   directions.column("explained_variance_ratio").to_numpy(), f"[L] PC1 variance share ({capability})")
        target = read_features([layout.target_activations(capability)], vectors=("layer_mean", "first_token"))
        dump.json(f"target_ids_{capability}.json", target.ids, f"in-domain example ids for {capability}")
        dump.array(f"target_layer_mean_{capability}.npy", target.vectors["layer_mean"],
                   f"[n, L, d] token means of the {capability} in-domain set")
        dump.array(f"target_first_token_{capability}.npy", target.vectors["first_token"],
                   f"[n, L, d] first-token states of the {capability} in-domain set")
        targets = pq.read_table(layout.target_selection(capability)).to_pylist()
        dump.jsonl(f"target_texts_{capability}.jsonl", [
            dict(zip(("prompt_text", "response_text"), template.render(t["prompt"], "", t["answer"])),
                 example_id=t["example_id"]) for t in targets],
            f"the {capability} in-domain examples exactly as rendered for the model")

    subset = pq.read_table(layout.subset(subset_version)).sort_by("rank")
    dump.json("selected_ids.json", subset.column("example_id").to_pylist(), "selected ids, rank 1 first")
    dump.array("selected_scores.npy", subset.column("score").to_numpy(), "the score each selected id was ranked by")
    pool = pq.read_table(layout.pool_examples, filters=[("status", "=", "kept")]).to_pylist()
    by_id = {r["example_id"]: r for r in pool}
    texts = []
    for example_id, n_tokens, truncated in zip(pool_ids, store.scalars["n_tokens"], store.scalars["truncated"]):
        row = by_id[example_id]
        prompt_text, response_text = template.render(row["instruction"], row["input"], row["output"])
        texts.append({"example_id": example_id, "prompt_text": prompt_text, "response_text": response_text,
                      "n_tokens": int(n_tokens), "truncated": bool(truncated)})
    dump.jsonl("pool_texts.jsonl", texts, "pool examples as rendered for the model (before truncation to n_tokens)")

    manifest = {
        "subset_version": subset_version,
        "lineage": {k: str(v) for k, v in lineage.items()},
        "params": params,
        "store": {k: read_metadata(layout.pool_activations(shards[0])).get(k)
                  for k in ("model_id", "template_hash", "featurizer", "layers")},
        "recipe": (
            "score_c = sum over layers l of pool_layer_mean[:, l] @ directions_c[l] (aggregation 'sum'); "
            "for capability 'all' with merge 'zsum': sum over capabilities of (score_c - mean) / std; "
            "rank by descending score, ties by ascending id; keep the first ceil(budget_ratio * N)."
        ),
        "files": dump.files,
    }
    return write_json(manifest, out_dir / "manifest.json")


def dump_selection(layout: LakeLayout, subset_version: str, out_dir: Path, template) -> Path:
    """Dump what any registered method's subset consumed and produced, with a manifest.

    NAIT subsets get :func:`dump_nait_selection`. Every other method gets: the pool ids in score order,
    the stored features its scorer read (``pool_<name>.npy``), per capability the scores, the in-domain
    ids and features, the [N, m] score matrix where the scorer keeps one, pool sources for balanced
    random, the selected ids in rank order, and the method's recipe."""
    from nait_pipeline.lib.methods import get_method
    from nait_pipeline.lib.methods.base import pool_groups, read_pool_store

    if not layout.lineage(subset_version).exists():
        raise FileNotFoundError(f"no lineage for subset {subset_version!r}: see `nait-pipeline subsets`")
    lineage = pq.read_table(layout.lineage(subset_version)).to_pylist()[0]
    if lineage["method"] == "nait":
        return dump_nait_selection(layout, subset_version, out_dir, template)
    method = get_method(lineage["method"])
    params = json.loads(lineage["params_json"])
    scorer = method.scorer
    dump = _Dump(out_dir)
    subset = pq.read_table(layout.subset(subset_version)).sort_by("rank")
    if scorer is None:
        kept = pq.read_table(layout.pool_examples, columns=["example_id"], filters=[("status", "=", "kept")])
        pool_ids = sorted(kept.column("example_id").to_pylist())
        dump.json("pool_ids.json", pool_ids, "kept pool ids, sorted: the list the seeded draw ranks")
        dump.json("pool_sources.json", pool_groups(layout, pool_ids), "pool source of each id (balanced random)")
    else:
        versions = params.get("score_versions") or {}
        for capability, version in versions.items():
            current = read_metadata(layout.scores(scorer.name, capability))["score_version"]
            if current != version:
                raise ValueError(f"{subset_version} was selected from {capability} score version {version}, but "
                                 f"the lake now holds {current}: dump a subset made from the current scores")
        if scorer.name == "less":  # LESS, BIDS, G2IS: the gradient store, in the official scripts' formats
            notes = _dump_gradient_inputs(dump, layout, method.name, params, sorted(versions), subset)
            dump.json("selected_ids.json", subset.column("example_id").to_pylist(), "selected ids, rank 1 first")
            return write_json({"subset_version": subset_version, "method": method.name,
                               "lineage": {k: str(v) for k, v in lineage.items()}, "params": params,
                               "recipe": method.recipe, "official": notes, "files": dump.files},
                              out_dir / "manifest.json")
        if scorer.read_pool is not None:  # LP: the selector's trajectories and clusters
            _dump_lp_inputs(dump, layout, scorer.read_pool(layout)[0])
            dump.json("selected_ids.json", subset.column("example_id").to_pylist(), "selected ids, rank 1 first")
            return write_json({"subset_version": subset_version, "method": method.name,
                               "lineage": {k: str(v) for k, v in lineage.items()}, "params": params,
                               "recipe": method.recipe, "files": dump.files}, out_dir / "manifest.json")
        store, _ = read_pool_store(layout, scorer.pool_vectors, scorer.pool_scalars)
        dump.json("pool_ids.json", store.ids, "pool example ids; row i of every pool array is this id")
        stored = {**{name: store.vector(name) for name in scorer.pool_vectors}, **store.scalars}
        for name, values in stored.items():
            dump.array(f"pool_{name}.npy", np.asarray(values), f"{name} of every pool example, from the store")
        for capability in versions:
            table = pq.read_table(layout.scores(scorer.name, capability), columns=["example_id", "score"])
            if table.column("example_id").to_pylist() != store.ids:
                raise ValueError(f"{scorer.name} scores for {capability} no longer match the pool store")
            dump.array(f"scores_{capability}.npy", table.column("score").to_numpy(zero_copy_only=False),
                       f"[N] {scorer.name} score per pool example for {capability} (NaN: no score defined)")
            matrix_path = layout.score_matrix(scorer.name, capability)
            if matrix_path.exists():
                with np.load(matrix_path) as stored:
                    dump.array(f"score_matrix_{capability}.npy", stored["matrix"],
                               f"[N, m] score of each pool example against each {capability} in-domain example "
                               "(transpose for a queries-by-pool layout)")
                    dump.json(f"target_ids_{capability}.json", stored["target_ids"].tolist(),
                              f"the m in-domain ids of {capability}, column order of the score matrix")
            if scorer.targeted:
                target = read_features([layout.target_activations(capability)], vectors=scorer.pool_vectors)
                for name, values in target.vectors.items():
                    dump.array(f"target_{name}_{capability}.npy", values,
                               f"{name} of the {capability} in-domain examples (target_ids order)")
    dump.json("selected_ids.json", subset.column("example_id").to_pylist(), "selected ids, rank 1 first")
    manifest = {
        "subset_version": subset_version,
        "method": method.name,
        "lineage": {k: str(v) for k, v in lineage.items()},
        "params": params,
        "recipe": method.recipe,
        "files": dump.files,
    }
    return write_json(manifest, out_dir / "manifest.json")


def _dump_lp_inputs(dump: _Dump, layout: LakeLayout, pool) -> None:
    """LP's inputs as arrays and in the official `subset.py` formats: `dataset.json` (rows in
    `pool_ids.json` order), `clustering.pkl` (row i: {"cluster_num": c}) and `epoch<e>.pkl` (row i's
    perplexity after epoch e; epoch0 before training). The official script reads epoch0..epoch3 and
    ranks by LP(1) with P3 as the last epoch: with E = 3 epochs the files map one to one."""
    texts = pq.read_table(layout.pool_examples, columns=["example_id", "instruction", "input", "output"],
                          filters=[("status", "=", "kept")])
    by_id = {r["example_id"]: r for r in texts.to_pylist()}
    dump.json("pool_ids.json", pool.ids, "the selector's slice, sorted by id; row i of every array and of dataset.json")
    dump.array("pool_perplexities.npy", pool.perplexities, "[N, E+1] response perplexity before training, then "
               "after each epoch (0 where no_response)")
    dump.array("pool_no_response.npy", pool.no_response, "[N] bool: no response token survived truncation")
    dump.array("pool_clusters.npy", pool.clusters, "[N] KMeans cluster of each row")
    dump.json("dataset.json", [{k: by_id[i][k] for k in ("instruction", "input", "output")} for i in pool.ids],
              "official subset.py --dataset: the slice's rows, pool_ids.json order")
    dump.pickle("clustering.pkl", [{"cluster_num": int(c)} for c in pool.clusters],
                "official subset.py --clustering: row i -> {'cluster_num': c}")
    for epoch in range(pool.perplexities.shape[1]):
        dump.pickle(f"epoch{epoch}.pkl", pool.perplexities[:, epoch].tolist(),
                    f"official subset.py --epoch{epoch}: perplexities " + ("before training" if epoch == 0
                                                                          else f"after epoch {epoch}"))


def _torch_file(dump: _Dump, name: str, values: np.ndarray, description: str) -> None:
    """A tensor file for official scripts that ``torch.load`` their inputs."""
    import torch

    path = dump.out_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".pt") as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(values)), tmp)
    dump.files[name] = {"shape": list(values.shape), "dtype": str(values.dtype), "description": description}


def _dump_gradient_inputs(dump: _Dump, layout: LakeLayout, method: str, params: dict, capabilities: list[str],
                          subset: pa.Table) -> dict:
    """The gradient store as the official scripts read it, rows in ``pool_ids.json`` order:

    - ``less/ckpt<e>/pool.pt`` [N, dim] (Adam features) and ``less/ckpt<e>/<capability>.pt`` [m, dim] (SGD
      features, each subtask's rows contiguous): LESS's ``matching.py`` with
      ``--gradient_path less/ckpt{}/{}.pt --validation_gradient_path less/ckpt{}/{}.pt --train_file_names pool``;
    - ``g2is/train_gradients.pt`` [N, C*dim] (``concat_c sqrt(w_c) * f_c``), ``g2is/validation_gradients.pt``
      (the capability's target rows, or every capability's stacked in name order for ``all``) and
      ``g2is/graph.npy`` [N, k]: the official ``gradient_walk.py``;
    - ``train.jsonl``: the pool rows for ``--train_files`` / ``--train_data_dir``;
    - the influence matrices (``score_matrix_<capability>.npy``) BIDS starts from.
    Returns the commands and the conditions under which they reproduce the subset."""
    from nait_pipeline.lib.methods import less_math
    from nait_pipeline.lib.methods.g2is import read_graph
    from nait_pipeline.lib.methods.gradient_pool import load_target_gradients, read_gradient_pool

    pool, _ = read_gradient_pool(layout)
    epochs = [c["epoch"] for c in json.loads(layout.warmup_record.read_text())["checkpoints"]]
    dump.json("pool_ids.json", pool.ids, "pool example ids; row i of every pool array and of train.jsonl")
    texts = pq.read_table(layout.pool_examples, columns=["example_id", "instruction", "input", "output"],
                          filters=[("status", "=", "kept")])
    by_id = {r["example_id"]: r for r in texts.to_pylist()}
    dump.jsonl("train.jsonl", [{"id": i, **{k: by_id[i][k] for k in ("instruction", "input", "output")}}
                               for i in pool.ids], "the pool rows, pool_ids.json order")
    dump.array("pool_zero_gradient.npy", pool.zero_gradient, "[N] bool: rows without a response token (never picked)")
    for epoch, vectors in zip(epochs, pool.checkpoints):
        _torch_file(dump, f"less/ckpt{epoch}/pool.pt", vectors, f"pool Adam gradient features at checkpoint {epoch}")
    targets, subtasks = {}, {}
    for capability in capabilities:
        target, _ = load_target_gradients(layout, capability)
        targets[capability] = target
        subtasks[capability] = {"n_subtasks": len(less_math.subtask_order(target.subtasks)),
                                "official_blocks": less_math.official_blocks(target.subtasks)}
        for epoch, vectors in zip(epochs, target.checkpoints):
            _torch_file(dump, f"less/ckpt{epoch}/{capability}.pt", vectors,
                        f"{capability} target SGD gradient features at checkpoint {epoch}, subtasks contiguous")
        dump.json(f"target_ids_{capability}.json", target.ids, f"{capability} target ids, row order of its files")
        dump.json(f"target_subtasks_{capability}.json", target.subtasks, f"the subtask of each {capability} target row")
        with np.load(layout.score_matrix("less", capability)) as stored:
            dump.array(f"score_matrix_{capability}.npy", stored["matrix"],
                       f"[N, m] LESS influence of each pool row on each {capability} target row (BIDS's input)")
    weights = " ".join(f"{w:.10g}" for w in pool.weights)
    notes = {
        "row_order": "every pool file's rows are pool_ids.json; official indices are row numbers in it",
        "less_matching": (f"python -m less.data_selection.matching --gradient_path 'less/ckpt{{}}/{{}}.pt' "
                          f"--train_file_names pool --ckpts {' '.join(map(str, epochs))} --checkpoint_weights "
                          f"{weights} --target_task_names {' '.join(capabilities)} --validation_gradient_path "
                          "'less/ckpt{}/{}.pt' --output_path selected_data; then write_selected_data.py "
                          "--train_file_names pool --train_files train.jsonl --target_task_names <capability> "
                          f"--percentage {params.get('budget_ratio')}"),
        "less_subtasks": subtasks,
        "less_conditions": "matching.py's N_SUBTASKS needs each capability name with its n_subtasks (above); its "
                           "reshape reproduces our per-subtask means only where official_blocks is true. The 'all' "
                           "subset is the max over capabilities of their scores.",
        "zero_gradient_rows": int(pool.zero_gradient.sum()),
    }
    if method == "g2is":
        features = pool.combined()
        stacked = np.concatenate([targets[c].combined(pool.weights) for c in capabilities])
        graph, graph_meta = read_graph(layout, pool.metadata["features_version"])
        _torch_file(dump, "g2is/train_gradients.pt", features, "[N, C*dim] combined pool gradient features")
        _torch_file(dump, "g2is/validation_gradients.pt", stacked,
                    f"combined target gradient features of {capabilities} (stacked in this order)")
        dump.array("g2is/graph.npy", graph, f"[N, k] neighbours, most similar first ({graph_meta['kind']})")
        notes["g2is_walk"] = (f"python gradient_walk.py --train_gradients_file g2is/train_gradients.pt "
                              f"--validation_gradients_file g2is/validation_gradients.pt --graph g2is/graph.npy "
                              f"--val_k {params.get('val_k')} --train_k {params.get('budget_ratio')} --ways "
                              f"{params.get('delta')} --train_data_dir train.jsonl --save g2is_out; "
                              "target_sample.kpl then lists selected_ids.json's rows of pool_ids.json, in order")
        notes["g2is_conditions"] = ("the same scikit-learn version as params.sklearn_version (PCA signs), "
                                    "sign_fix false, an exact graph (a faiss graph may pad with -1), no zero-gradient "
                                    "rows (the official walk cannot exclude them)")
    return notes
