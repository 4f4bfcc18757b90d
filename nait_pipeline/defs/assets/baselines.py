"""Reference subsets every comparison needs: seeded uniform random subsets and the full pool."""

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.defs.assets.features import read_model_record
from nait_pipeline.defs.metadata import markdown_table
from nait_pipeline.defs.partitions import register_subset_versions
from nait_pipeline.defs.resources import PipelineResource
from nait_pipeline.lib import selection
from nait_pipeline.lib.lake import read_metadata
from nait_pipeline.lib.layout import LakeLayout
from nait_pipeline.lib.subsets import write_subset


class RandomSubsetConfig(dg.Config):
    budget_ratio: float = 0.1
    """Share of the pool each random subset keeps (ceil(r * N), the NAIT budget)."""
    seeds: list[int] = [0, 1, 2]
    """One subset per seed."""


@dg.asset(group_name="baselines", kinds={"parquet"}, code_version="1", deps=["it_pool", "base_model"])
def random_subsets(context: dg.AssetExecutionContext, config: RandomSubsetConfig,
                   pipeline: PipelineResource) -> dg.MaterializeResult:
    """Seeded uniform random subsets of the kept pool (method `random`, one version per seed) and the
    full pool as the reference (method `full`), with the same lineage as every other subset."""
    layout = LakeLayout(pipeline.settings.lake_dir)
    model = read_model_record(layout)
    kept = pq.read_table(layout.pool_examples, columns=["example_id"], filters=[("status", "=", "kept")])
    ids = sorted(kept.column("example_id").to_pylist())
    pool_version = read_metadata(layout.pool_examples)["pool_version"]
    k = selection.budget(len(ids), config.budget_ratio)
    written = [
        write_subset(layout, method="random", capability="all", ids=ids, scores=None,
                     chosen=selection.seeded_random(ids, k, seed), budget_ratio=config.budget_ratio,
                     params={"budget_ratio": config.budget_ratio, "seed": seed}, pool_version=pool_version,
                     model=model)
        for seed in config.seeds
    ]
    written.append(write_subset(layout, method="full", capability="all", ids=ids, scores=None,
                                chosen=list(range(len(ids))), budget_ratio=1.0, params={"budget_ratio": 1.0},
                                pool_version=pool_version, model=model))
    register_subset_versions(context.instance, [w["subset_version"] for w in written])
    summary = pa.Table.from_pylist([{k: v for k, v in w.items() if k != "ids"} for w in written])
    return dg.MaterializeResult(
        metadata={"budget": k, "n_pool": len(ids), "subsets": markdown_table(summary, len(written)),
                  "subset_versions": dg.MetadataValue.json([w["subset_version"] for w in written])},
        data_version=dg.DataVersion(selection.selected_ids_sha256([w["subset_version"] for w in written])[:16]),
    )
