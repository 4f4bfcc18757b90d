"""The tables of the SQL contract that later stages fill: scores, subsets and their lineage.

Each lives as a folder of Parquet files in the lake; an empty file with the schema is written
first, so the warehouse views bind (and answer with zero rows) before any method has run.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from nait_pipeline.lib.feature_store import EMPTY_SCHEMA as FEATURES_SCHEMA
from nait_pipeline.lib.lake import write_parquet
from nait_pipeline.lib.targets import TARGET_SCHEMA

SCORES_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("capability", pa.string()),
        ("example_id", pa.string()),
        ("score", pa.float64()),
        ("score_version", pa.string()),
        ("pool_version", pa.string()),
        ("model_id", pa.string()),
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
    ]
)
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
CONTRACT_TABLES = {"scores": SCORES_SCHEMA, "subsets": SUBSETS_SCHEMA, "subset_lineage": LINEAGE_SCHEMA,
                   "current_subsets": CURRENT_SUBSETS_SCHEMA,
                   "finetune_runs": FINETUNE_SCHEMA, "evaluations": EVALUATIONS_SCHEMA,
                   "comparisons": COMPARISON_SCHEMA}
# Folders read through a glob: each needs at least one file for its view to bind.
DIRECTIONS_SCHEMA = pa.schema(
    [
        ("capability", pa.string()),
        ("layer", pa.int64()),
        ("direction", pa.list_(pa.float32())),
        ("explained_variance_ratio", pa.float64()),
        ("sign_flipped", pa.bool_()),
    ]
)
GLOBBED_FOLDERS = {
    **CONTRACT_TABLES,
    "features/pool_activations": FEATURES_SCHEMA,
    "features/target_activations": FEATURES_SCHEMA,
    "directions": DIRECTIONS_SCHEMA,
    "targets/selection": TARGET_SCHEMA,
    "targets/test": TARGET_SCHEMA,
}
EMPTY_FILE = "_schema.parquet"


def ensure_contract_tables(lake_dir: Path) -> list[Path]:
    """Create the schema-only file of each globbed table where it is missing."""
    written = []
    for name, schema in GLOBBED_FOLDERS.items():
        path = lake_dir / name / EMPTY_FILE
        if not path.exists():
            written.append(write_parquet(schema.empty_table(), path))
    return written
