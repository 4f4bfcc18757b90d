"""Baselines and references: perplexity bands, longest-k, random (uniform, balanced, stratified), the oracle by source, the full pool, and the diversity selectors k-center and facility location."""
