"""Training-run keys: what one model of the loop is. A partition of `finetuned_model` / `evaluation` is

- ``<subset_version>``: the base model fine-tuned on that subset with the configured seed;
- ``<subset_version>@order<k>``: the same subset, training order seed + k (a replicate: it measures
  how much a method's result moves with the training order alone);
- ``base``: the base model itself, not fine-tuned (evaluation only): the zero point.
"""

from __future__ import annotations

import re

BASE = "base"
_REPLICATE = re.compile(r"^(?P<version>.+)@order(?P<offset>[1-9][0-9]*)$")


def parse_run_key(key: str) -> tuple[str | None, int]:
    """(subset version, seed offset) of a run key; (None, 0) for the base model."""
    if key == BASE:
        return None, 0
    match = _REPLICATE.match(key)
    if match:
        return match["version"], int(match["offset"])
    return key, 0


def replicate_keys(version: str, replicates: int) -> list[str]:
    """The run keys of ``replicates`` training orders of one subset version (the first is the version)."""
    return [version] + [f"{version}@order{k}" for k in range(1, replicates)]


def run_seed(base_seed: int, key: str) -> int:
    """The training seed of a run key: the configured seed, plus k for a replicate ``@order<k>``."""
    return base_seed + parse_run_key(key)[1]


def model_folder(key: str) -> str:
    """The folder a run's model is saved in: the key with "-" for "@" (transformers derives a module name
    from the folder and warns about an "@" on every load)."""
    return key.replace("@", "-")
