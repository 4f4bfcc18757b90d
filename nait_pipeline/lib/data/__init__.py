"""Raw inputs: pool ingestion (validation, quarantine, dedup, shards) and per-capability target sets."""
