"""NAIT's target model: per-layer capability directions (methods.md sections 4 and 11). Its scores and
subsets come from the method registry (`nait_scores`, `nait_subsets` in ``methods.py``)."""

import dagster as dg
import numpy as np

from nait_pipeline.defs.metadata import path_value
from nait_pipeline.defs.partitions import capability_partitions
from nait_pipeline.defs.plots import bar_plot
from nait_pipeline.defs.resources import LakeResource
from nait_pipeline.lib.features.reduction import massive_dims
from nait_pipeline.lib.io.lake import read_table, write_parquet
from nait_pipeline.lib.methods.nait.nait_method import CODE_VERSION, write_directions


class DirectionConfig(dg.Config):
    drift: str = "R2"
    """R2 (token mean - first token, default) | R1 (last - first token) | R3 (token mean)."""
    min_rows: int = 2
    """Fewest in-domain rows accepted for the per-layer PCA."""


@dg.asset(
    group_name="nait",
    kinds={"parquet"},
    code_version=CODE_VERSION,
    partitions_def=capability_partitions,
    deps=["target_activations"],
)
def capability_directions(context: dg.AssetExecutionContext, config: DirectionConfig,
                          pipeline: LakeResource) -> dg.MaterializeResult:
    """Per decoder layer, the first principal component of the in-domain activation drift of one
    capability, sign-fixed to point along the mean drift: NAIT's reusable capability feature."""
    capability = context.partition_key
    path, fitted, alignment, version = write_directions(pipeline.layout, capability, config.drift, config.min_rows)
    layers = read_table(path, columns=["layer"]).column("layer").to_pylist()
    plot = bar_plot(fitted.explained_variance_ratio, layers,
                    f"{capability}: PC1 explained variance per layer ({config.drift})", "ratio",
                    path.with_suffix(".png"))
    return dg.MaterializeResult(
        metadata={
            "n_rows": fitted.n_rows,
            "layers": len(layers),
            "drift": config.drift,
            "mean_explained_variance": float(fitted.explained_variance_ratio.mean()),
            "sign_flipped_layers": int(fitted.sign_flipped.sum()),
            "explained_variance_plot": plot,
            "mean_sink_alignment": float(alignment.mean()),
            "sink_alignment_plot": bar_plot(alignment, layers,
                                            f"{capability}: |cos(direction, first-token state)| per layer", "|cos|",
                                            path.with_name(f"{capability}_sink_alignment.png")),
            "path": path_value(path),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    group_name="nait",
    kinds={"torch", "parquet"},
    code_version="1",
    deps=["it_pool", "target_sets", "base_model"],
)
def template_prefix(context: dg.AssetExecutionContext, pipeline: LakeResource) -> dg.MaterializeResult:
    """The template prefix every rendered pool and in-domain prompt starts with (measured: the longest
    shared token prefix), and one forward of it: per layer the sum of its states and its first state.
    NAIT-C removes that sum from the stored token means exactly and masks the first token's massive
    dimensions. A template without a common start gives an empty prefix (reported), not an assumed one."""

    from nait_pipeline.lib.features import prefix as pf
    from nait_pipeline.lib.features.forward import cached_model

    layout = pipeline.layout
    record = pipeline.base_model()
    model, template = cached_model(record.path, "float32", "cpu")
    table, meta, first = pf.prefix_table(layout, model, template, record)
    write_parquet(table, layout.template_prefix, meta)
    length, text, version, rows_checked = meta["prefix_tokens"], meta["prefix_text"], meta["prefix_version"], \
        meta["rows_checked"]
    if length == 0:
        context.log.warning("the rendered prompts share no token prefix: NAIT-C cleans nothing")
    massive = massive_dims(first)  # against the first state's own median: an underestimate of the count
    return dg.MaterializeResult(
        metadata={"prefix_tokens": length, "prefix_text": dg.MetadataValue.md(f"```\n{text}\n```"),
                  "rows_checked": rows_checked, "max_first_token_magnitude": float(np.abs(first).max()) if length else 0.0,
                  "massive_dims_per_layer": dg.MetadataValue.json(massive.sum(1).tolist()),
                  "path": path_value(layout.template_prefix), "prefix_version": version},
        data_version=dg.DataVersion(version),
    )
