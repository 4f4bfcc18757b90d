"""Storage and configuration: settings, the lake (atomic Parquet), its layout, the SQL contract's schemas and the DuckDB warehouse."""
