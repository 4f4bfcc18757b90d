"""Where pool shards are featurized: in the run's own process, or on Ray workers (``executor`` setting)."""
