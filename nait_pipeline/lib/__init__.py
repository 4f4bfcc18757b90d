"""Dagster-free building blocks: storage, ingestion, featurization, scoring and selection."""
