"""Where each table lives in the lake. One place, so assets, views and the CLI agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LakeLayout:
    """``root``: the lake (a local folder or an object store's ``UPath``). ``scratch``: a local folder for the
    training runs' checkpoint folders when the lake is on an object store (they are rewritten in place
    while a run trains and resumes); None keeps them in the lake."""

    root: Path
    scratch: Path | None = None

    @property
    def model_record(self) -> Path:
        return self.root / "model" / "base_model.json"

    @property
    def pool_examples(self) -> Path:
        return self.root / "pool" / "examples.parquet"

    @property
    def pool_quarantine(self) -> Path:
        return self.root / "pool" / "quarantine.parquet"

    @property
    def pool_contamination(self) -> Path:
        """Pool rows that contain a test item the loop evaluates on (``pool_contamination``)."""
        return self.root / "pool_contamination" / "current.parquet"

    @property
    def pool_near_duplicates(self) -> Path:
        """Near-duplicate clusters of the kept pool rows (``pool_near_duplicates``)."""
        return self.root / "pool_near_duplicates" / "current.parquet"

    @property
    def pool_files(self) -> Path:
        return self.root / "pool" / "files.parquet"

    def target_selection(self, capability: str) -> Path:
        return self.root / "targets" / "selection" / f"{capability}.parquet"

    def target_test(self, capability: str) -> Path:
        return self.root / "targets" / "test" / f"{capability}.parquet"

    def pool_activations(self, shard: str) -> Path:
        return self.root / "features" / "pool_activations" / f"{shard}.parquet"

    def target_activations(self, capability: str) -> Path:
        return self.root / "features" / "target_activations" / f"{capability}.parquet"

    def pool_moments(self, shard: str) -> Path:
        """NAIT-C's per-shard sums of the cleaned pool features (capability-independent, reused by each)."""
        return self.root / "features" / "pool_moments" / f"{shard}.npz"

    @property
    def template_prefix(self) -> Path:
        """The constant template prefix every rendered example starts with: its length and per-layer states."""
        return self.root / "features" / "template_prefix.parquet"

    @property
    def selector_run(self) -> Path:
        """Learning Percentage's selector training: per-epoch perplexities and the newest checkpoint."""
        return (self.scratch or self.root) / "features" / "selector" / "run"

    @property
    def selector_trajectories(self) -> Path:
        return self.root / "features" / "selector" / "trajectories.parquet"

    @property
    def selector_clusters(self) -> Path:
        return self.root / "features" / "selector" / "clusters.parquet"

    @property
    def warmup_run(self) -> Path:
        """The gradient methods' LoRA warmup: one checkpoint (adapter + Adam moments) per epoch."""
        return (self.scratch or self.root) / "features" / "gradients" / "warmup"

    @property
    def warmup_record(self) -> Path:
        """What the warmup produced: adapter version, checkpoints with their mean learning rates, config."""
        return self.root / "features" / "gradients" / "warmup.json"

    def pool_gradients(self, shard: str, checkpoint: int) -> Path:
        return self.root / "features" / "gradients" / "pool" / f"ckpt{checkpoint}" / f"{shard}.parquet"

    def target_gradients(self, capability: str, checkpoint: int) -> Path:
        return self.root / "features" / "gradients" / "targets" / f"ckpt{checkpoint}" / f"{capability}.parquet"

    @property
    def gradient_graph(self) -> Path:
        """G2IS's kNN graph over the pool's combined gradient features."""
        return self.root / "features" / "gradients" / "graph.npz"

    def directions(self, capability: str) -> Path:
        return self.root / "directions" / f"{capability}.parquet"

    def scores(self, method: str, capability: str) -> Path:
        return self.root / "scores" / f"{method}__{capability}.parquet"

    def score_matrix(self, scorer: str, capability: str) -> Path:
        """[N, m] scores per target instance (RDS+), for policies that need more than one score."""
        return self.root / "score_matrices" / f"{scorer}__{capability}.npz"

    @property
    def current_subsets_dir(self) -> Path:
        return self.root / "current_subsets"

    def current_subsets(self, method: str) -> Path:
        """The subset versions the last selection of ``method`` wrote, one row per slot."""
        return self.current_subsets_dir / f"{method}.parquet"

    def subset_diagnostics(self, subset_version: str) -> Path:
        return self.root / "subset_diagnostics" / f"{subset_version}.parquet"

    def subset_explanation(self, subset_version: str) -> Path:
        return self.root / "subset_explanations" / f"{subset_version}.parquet"

    def subset_diff(self, new_version: str, old_version: str) -> Path:
        return self.root / "subset_diffs" / f"{new_version}__from__{old_version}.parquet"

    def subset(self, subset_version: str) -> Path:
        return self.root / "subsets" / f"{subset_version}.parquet"

    @property
    def lineage_dir(self) -> Path:
        return self.root / "subset_lineage"

    def lineage(self, subset_version: str) -> Path:
        return self.lineage_dir / f"{subset_version}.parquet"

    def finetune_run(self, subset_version: str) -> Path:
        return self.root / "finetune_runs" / f"{subset_version}.parquet"

    def evaluation_items(self, subset_version: str) -> Path:
        return self.root / "evaluation_items" / f"{subset_version}.parquet"

    def evaluation(self, subset_version: str) -> Path:
        return self.root / "evaluations" / f"{subset_version}.parquet"

    def comparison_intervals(self, name: str) -> Path:
        return self.root / "comparison_intervals" / f"{name}.parquet"

    def comparison(self, protocol: str) -> Path:
        return self.root / "comparisons" / f"{protocol}.parquet"
