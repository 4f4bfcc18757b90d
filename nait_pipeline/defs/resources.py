"""Resources: where the pipeline reads and writes, defaulting to the settings file and NAIT_* variables."""

from pathlib import Path

import dagster as dg

from nait_pipeline.lib.execution.executors import ShardExecutor
from nait_pipeline.lib.features.reduction import StoreReduction, resolve
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import PoolView
from nait_pipeline.lib.io.settings import Settings
from nait_pipeline.lib.io.storage import is_object_store_uri
from nait_pipeline.lib.models.model_io import ModelInfo


class LakeResource(dg.ConfigurableResource):
    """The lake every asset shares (see README, "Configuration"): its locations, the current pool
    (`pool()`: version, kept ids, shards and their versions, sources, hashes) and the base model's record
    (`base_model()`), each read through one object."""

    data_dir: str
    store_dir: str
    model: str | None = None
    pool_sample: int | None = None
    max_shards_per_tick: int = 4
    store_layers: str = "auto"
    store_dim: int = -1
    store_seed: int = 0
    store_float_width: str = "auto"
    store_bits: int = -1
    licenses: dict[str, str] = {}
    endpoint_url: str | None = None
    local_dir: str | None = None
    executor: str = "local"
    ray_address: str = ""
    ray_workers: int = 2
    ray_cpus_per_worker: float = 1.0
    ray_gpus_per_worker: float = -1.0
    ray_max_retries: int = 2

    @property
    def settings(self) -> Settings:
        values = {name: getattr(self, name) for name in type(self).model_fields}
        store = self.store_dir if is_object_store_uri(self.store_dir) else Path(self.store_dir)
        return Settings(**{**values, "data_dir": Path(self.data_dir), "store_dir": store,
                           "local_dir": Path(self.local_dir) if self.local_dir else None,
                           "licenses": dict(self.licenses)})

    @property
    def layout(self) -> LakeLayout:
        return self.settings.layout

    def pool(self) -> PoolView:
        """The current pool table (cached per file: a re-ingested pool is a new view)."""
        return PoolView.open(self.layout)

    def base_model(self) -> ModelInfo:
        """The base model the lake is built with (`base_model`'s record)."""
        return ModelInfo.read(self.layout)

    def shard_executor(self) -> ShardExecutor:
        """Where pool shards are featurized (settings `executor` and `[ray]`)."""
        return ShardExecutor.from_settings(self.settings)

    def store_reduction(self, model: ModelInfo) -> StoreReduction:
        """What the forward store keeps per row for this model (settings `[forward_store]`): one setting
        for the pool and every target set, so they are always comparable."""
        return resolve(self.store_layers, self.store_dim, self.store_seed, self.store_float_width,
                       model.num_layers, model.hidden_size, self.store_bits)


def lake_resource_from_settings(settings: Settings) -> LakeResource:
    """The resource of every setting it carries (the sensor's `featurize_new_shards` is read at load)."""
    values = {name: getattr(settings, name) for name in LakeResource.model_fields}
    return LakeResource(**{**values, "data_dir": str(settings.data_dir), "store_dir": str(settings.store_dir),
                           "local_dir": str(settings.local_dir) if settings.local_dir else None,
                           "licenses": dict(settings.licenses)})


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={"pipeline": lake_resource_from_settings(Settings.from_env())},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )
