"""Every table of the SQL contract, in one place: the pool, target sets, feature stores, scores,
subsets, lineage, current subsets, fine-tuning runs, evaluations and comparisons.

Globbed tables live as folders of Parquet files in the lake; an empty file with the schema is written
first, so the warehouse views bind (and answer with zero rows) before any method has run.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.io.lake import read_schema, write_parquet

# Pool rows as ingested: every row read is kept, a duplicate, sampled out, or quarantined.
POOL_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("pool", pa.string()),
        ("source", pa.string()),
        ("file", pa.string()),
        ("row_index", pa.int64()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("content_hash", pa.string()),
        ("status", pa.string()),
        ("duplicate_of", pa.string()),
        ("shard", pa.string()),
        # A conversation's turns (lib/data/conversation.py), canonical JSON; NULL for a triple or a single
        # user/assistant exchange (stored as its triple). instruction/output then hold its text view.
        ("messages", pa.string()),
        ("ingest_flag", pa.string()),  # why ingest changed the row (turns dropped), else NULL
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("pool", pa.string()),
        ("file", pa.string()),
        ("row_index", pa.int64()),
        ("example_id", pa.string()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)

# In-domain (selection) and held-out (test) target rows.
TARGET_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("capability", pa.string()),
        ("task", pa.string()),
        ("split", pa.string()),
        ("file", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("extra_json", pa.string()),
    ]
)

# The forward feature store (one file per pool shard or capability). The per-layer vectors are one
# fixed-size binary value per row (float16 or float32, see the file's `vector_dtypes`); a coded store's pool
# shards hold `<name>_codes` and `<name>_exact` columns instead (feature_store.py, quantize.py).
FEATURES_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("n_tokens", pa.int32()),
        ("n_response_tokens", pa.int32()),
        ("full_length", pa.int32()),
        ("truncated", pa.bool_()),
        ("response_loss", pa.float64()),
        ("layer_mean", pa.binary()),
        ("first_token", pa.binary()),
        ("rds_embedding", pa.list_(pa.float32())),
    ]
)


SCORES_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("capability", pa.string()),
        ("example_id", pa.string()),
        ("score", pa.float64()),
        ("score_version", pa.string()),
        ("pool_version", pa.string()),
        ("model_id", pa.string()),
        # Written by the scorers that explain a score (NAIT-C); NULL for the others.
        ("layer_contributions", pa.list_(pa.float32())),  # per layer: weight x standardised projection
        ("nearest_targets", pa.list_(pa.string())),  # nearest in-domain ids, nearest first
        ("nearest_similarity", pa.list_(pa.float64())),
    ]
)
SUBSETS_SCHEMA = pa.schema(
    [
        ("subset_version", pa.string()),
        ("method", pa.string()),
        ("capability", pa.string()),
        ("budget_ratio", pa.float64()),
        ("rank", pa.int64()),
        ("example_id", pa.string()),
        ("score", pa.float64()),
        ("content_hash", pa.string()),  # the row's text hash when selected: exports refuse changed rows
    ]
)
LINEAGE_SCHEMA = pa.schema(
    [
        ("subset_version", pa.string()),
        ("pool_version", pa.string()),
        ("model_id", pa.string()),
        ("template_hash", pa.string()),
        ("method", pa.string()),
        ("capability", pa.string()),
        ("params_json", pa.string()),
        ("n_pool", pa.int64()),
        ("n_selected", pa.int64()),
        ("selected_ids_sha256", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("code_commit", pa.string()),  # git commit of the code that first made this version
    ]
)
# Offline diagnostics of each subset version (lib/selection/diagnostics.py).
SUBSET_DIAGNOSTICS_SCHEMA = pa.schema([
    ("subset_version", pa.string()),
    ("method", pa.string()),
    ("capability", pa.string()),
    ("n_selected", pa.int64()),
    ("length_ratio", pa.float64()),  # mean response characters of the subset / of the pool
    ("spearman_length", pa.float64()),  # Spearman(score, response characters) over the pool; NULL: no score
    ("overlap_longest", pa.float64()),  # |subset ∩ longest-k| / k
    ("overlap_random", pa.float64()),  # |subset ∩ seeded random k| / k
    ("composition_json", pa.string()),  # source -> share of the subset
    ("enrichment_json", pa.string()),  # source -> share of the subset / share of the pool
    # Contaminated pool rows (pool_contamination): in the subset, and left out of its candidates (then the
    # number the same selection takes without leaving them out). NULL: the pool was not checked.
    ("contaminated_selected", pa.int64()),
    ("contaminated_excluded", pa.int64()),
    ("contaminated_would_take", pa.int64()),
    # Share of the subset's rows in a near-duplicate group with another of its rows (NULL: not clustered).
    ("duplicate_share", pa.float64()),
])
# Row-level changes between a slot's previous and current subset version.
SUBSET_DIFFS_SCHEMA = pa.schema([
    ("old_version", pa.string()),
    ("new_version", pa.string()),
    ("example_id", pa.string()),
    ("change", pa.string()),  # added | removed | kept
    ("old_rank", pa.int64()),
    ("new_rank", pa.int64()),
    ("rank_change", pa.int64()),  # old_rank - new_rank: positive means it moved up
    ("text_changed", pa.bool_()),
])
# One row per slot (method, capability, slot such as "seed=0"): the subset version that the last
# selection of the method wrote there. Comparisons and protocols read what the pipeline holds now here.
CURRENT_SUBSETS_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("capability", pa.string()),
        ("slot", pa.string()),
        ("budget_ratio", pa.float64()),
        ("subset_version", pa.string()),
        ("pool_version", pa.string()),
        ("selected_at", pa.timestamp("us", tz="UTC")),
        ("previous_version", pa.string()),  # what filled the slot before (subset_diffs shows the change)
    ]
)
FINETUNE_SCHEMA = pa.schema(
    [
        ("subset_version", pa.string()),
        ("base_model_id", pa.string()),
        ("model_path", pa.string()),
        ("train_params_json", pa.string()),
        ("examples", pa.int64()),
        ("steps", pa.int64()),
        ("tokens", pa.int64()),
        ("final_loss", pa.float64()),
        ("seconds", pa.float64()),
    ]
)
EVALUATIONS_SCHEMA = pa.schema(
    [
        ("subset_version", pa.string()),
        ("capability", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("n", pa.int64()),
        ("eval_params_json", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
# One row per (subset version, capability, item, metric): what every aggregate is computed from.
EVALUATION_ITEMS_SCHEMA = pa.schema([
    ("subset_version", pa.string()),
    ("capability", pa.string()),
    ("benchmark", pa.string()),  # gsm8k, mbpp, humaneval, bbh/<task>, mmlu/<subject>, or the capability
    ("item_id", pa.string()),
    ("metric", pa.string()),  # gold_logprob_per_token | option_logprob (higher is better)
    ("value", pa.float64()),  # NULL when not computable
    ("status", pa.string()),  # ok | not_computable
    ("reason", pa.string()),
    ("eval_params_json", pa.string()),
])
# Per method, reference, capability and per-item metric: Δ with its interval (lib/evaluation/intervals.py).
INTERVALS_SCHEMA = pa.schema([
    ("comparison", pa.string()),
    ("method", pa.string()),
    ("reference", pa.string()),
    ("eval_capability", pa.string()),
    ("metric", pa.string()),
    ("delta", pa.float64()),
    ("se", pa.float64()),
    ("df", pa.int64()),
    ("lower", pa.float64()),  # one-sided 95 % lower bound
    ("upper", pa.float64()),  # one-sided 95 % upper bound
    ("p_value", pa.float64()),
    ("bootstrap_lower", pa.float64()),
    ("bootstrap_upper", pa.float64()),
    ("runs_method", pa.int64()),
    ("runs_reference", pa.int64()),
    ("items", pa.int64()),
    ("better", pa.bool_()),
    # still better after Holm over the comparison's family: every method x capability against random
    ("better_holm", pa.bool_()),
    ("no_interval", pa.string()),
    ("label", pa.string()),  # Δ [low, high], or Δ (no interval: why)
])
COMPARISON_SCHEMA = pa.schema([
    ("comparison", pa.string()),
    ("method", pa.string()),
    ("eval_capability", pa.string()),
    ("metric", pa.string()),
    ("higher_is_better", pa.bool_()),
    ("runs", pa.int64()),
    ("mean", pa.float64()),
    ("std", pa.float64()),
    ("n_items", pa.int64()),
    ("random_mean", pa.float64()),
    ("random_std", pa.float64()),
    ("full_value", pa.float64()),
    ("delta_vs_random", pa.float64()),
    ("n_selected", pa.int64()),
    ("selection_seconds", pa.float64()),
    ("selection_tokens", pa.int64()),
    ("train_seconds", pa.float64()),
    ("train_tokens", pa.int64()),
    ("subset_versions", pa.string()),
])
# Why a row is in a subset, where the method records it (NAIT-C): the capability whose turn chose it in
# an all-capability round-robin.
SUBSET_EXPLANATIONS_SCHEMA = pa.schema([
    ("subset_version", pa.string()),
    ("example_id", pa.string()),
    ("rank", pa.int64()),
    ("chosen_by", pa.string()),
])
CONTRACT_TABLES = {"scores": SCORES_SCHEMA, "subsets": SUBSETS_SCHEMA, "subset_lineage": LINEAGE_SCHEMA,
                   "current_subsets": CURRENT_SUBSETS_SCHEMA, "subset_diffs": SUBSET_DIFFS_SCHEMA,
                   "subset_diagnostics": SUBSET_DIAGNOSTICS_SCHEMA, "subset_explanations": SUBSET_EXPLANATIONS_SCHEMA,
                   "finetune_runs": FINETUNE_SCHEMA, "evaluations": EVALUATIONS_SCHEMA,
                   "evaluation_items": EVALUATION_ITEMS_SCHEMA, "comparison_intervals": INTERVALS_SCHEMA,
                   "comparisons": COMPARISON_SCHEMA}
# Folders read through a glob: each needs at least one file for its view to bind.
DIRECTIONS_SCHEMA = pa.schema(
    [
        ("capability", pa.string()),
        ("layer", pa.int64()),
        ("direction", pa.list_(pa.float32())),
        ("explained_variance_ratio", pa.float64()),
        ("sign_flipped", pa.bool_()),
        ("sink_alignment", pa.float64()),  # |cos(direction, mean first-token state)|: near 1 = a length axis
    ]
)
# Pool rows containing a test item (lib/data/decontamination.py): one row per row x field x item.
CONTAMINATION_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("field", pa.string()),
    ("benchmark", pa.string()),
    ("capability", pa.string()),
    ("test_id", pa.string()),
    ("coverage", pa.float64()),
    ("exact_prompt", pa.bool_()),
])
# Near-duplicate clusters of kept pool rows (lib/selection/near_duplicates.py): one row per row x kind.
NEAR_DUPLICATES_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("kind", pa.string()),  # instruction | response | embedding
    ("cluster", pa.string()),  # <kind>:<first example id of the cluster>
    ("cluster_size", pa.int64()),
    ("group", pa.string()),  # the clusters of every kind joined
])
GLOBBED_FOLDERS = {
    **CONTRACT_TABLES,
    "pool_contamination": CONTAMINATION_SCHEMA,
    "pool_near_duplicates": NEAR_DUPLICATES_SCHEMA,
    "features/pool_activations": FEATURES_SCHEMA,
    "features/target_activations": FEATURES_SCHEMA,
    "directions": DIRECTIONS_SCHEMA,
    "targets/selection": TARGET_SCHEMA,
    "targets/test": TARGET_SCHEMA,
}
EMPTY_FILE = "_schema.parquet"


def ensure_contract_tables(lake_dir: Path) -> list[Path]:
    """Create the schema-only file of each globbed table where it is missing or of an older schema
    (its columns are what a view binds when no data file has them yet)."""

    written = []
    for name, schema in GLOBBED_FOLDERS.items():
        path = lake_dir / name / EMPTY_FILE
        if not path.exists() or not read_schema(path).remove_metadata().equals(schema):
            written.append(write_parquet(schema.empty_table(), path))
    return written
