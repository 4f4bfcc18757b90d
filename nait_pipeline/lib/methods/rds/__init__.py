"""RDS+: cosine of position-weighted last-layer embeddings, round-robin or top-B."""
