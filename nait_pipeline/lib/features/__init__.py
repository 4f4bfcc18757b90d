"""The feature store: one forward pass per example, the Parquet store and what still needs featurizing."""
