"""Selection policies over scores (top-k, round-robin, bands, balanced random) and versioned subsets."""
