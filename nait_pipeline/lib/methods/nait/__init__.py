"""NAIT and NAIT-C: capability directions in the forward store's activations, and their scores."""
