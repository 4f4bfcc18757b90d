"""Resources: where the pipeline reads and writes, defaulting to the NAIT_* environment variables."""

from pathlib import Path

import dagster as dg

from nait_pipeline.lib.io.settings import Settings


class PipelineResource(dg.ConfigurableResource):
    """Locations and the model every asset shares (see README, "Configuration")."""

    data_dir: str
    store_dir: str
    model: str | None = None
    pool_sample: int | None = None

    @property
    def settings(self) -> Settings:
        return Settings(
            data_dir=Path(self.data_dir),
            store_dir=Path(self.store_dir),
            model=self.model,
            pool_sample=self.pool_sample,
        )


def pipeline_resource_from_env() -> PipelineResource:
    settings = Settings.from_env()
    return PipelineResource(
        data_dir=str(settings.data_dir),
        store_dir=str(settings.store_dir),
        model=settings.model,
        pool_sample=settings.pool_sample,
    )


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={"pipeline": pipeline_resource_from_env()},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )
