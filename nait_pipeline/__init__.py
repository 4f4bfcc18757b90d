"""nait_pipeline: instruction-tuning data selection (NAIT and baselines) as a Dagster code location."""

__version__ = "0.1.0"
