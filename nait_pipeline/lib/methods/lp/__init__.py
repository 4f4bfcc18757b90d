"""Learning Percentage: a selector model's perplexity trajectories, per cluster."""
