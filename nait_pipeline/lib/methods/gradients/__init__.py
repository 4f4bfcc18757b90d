"""The gradient methods on one gradient store: LESS's scorer, and the LESS, BIDS and G2IS policies."""
