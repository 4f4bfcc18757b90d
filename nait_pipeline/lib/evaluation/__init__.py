"""Closing the loop: per-capability evaluation, comparison of methods, protocols."""
