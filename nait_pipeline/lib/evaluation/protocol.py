"""Comparison protocols: which pool slice, budget, methods and seeds one run of the loop compares.

A protocol owns its store (``<store>/protocols/<name>``) and an input folder of links to the
chosen pool file and the target sets, so it never mixes with the main store. Everything it needs
is in the `Protocol` record, which is also written next to the results.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


from nait_pipeline.lib.data.mixed_pool import CPU_MIX_2K
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.lake import read_table


@dataclass(frozen=True)
class Protocol:
    name: str
    pool_file: str  # a file name under <data>/pools, or the name of the mixed pool file the protocol builds
    slice_rows: int  # the seeded slice of that pool (NAIT_POOL_SAMPLE)
    budget_ratio: float
    random_seeds: tuple[int, ...]
    target_size: int  # in-domain rows per capability for the NAIT directions
    methods: tuple[str, ...]  # registered methods whose subsets are fine-tuned and compared
    train: dict = field(default_factory=dict)  # finetuned_model config
    evaluation: dict = field(default_factory=dict)  # evaluation config
    features: dict = field(default_factory=dict)  # config of feature assets besides the forward store, by asset
    mix: tuple = ()  # MixGroups: the pool is built from several shared pool files (lib/data/mixed_pool.py)
    order_replicates: dict = field(default_factory=dict)  # method -> training-order runs of each of its subsets
    evaluate_base: bool = False  # evaluate the base model, not fine-tuned: the zero point
    random_reference: str = "random"  # the seeded method whose runs are the comparison's "random"
    # Subsets of targeted methods that are fine-tuned, by capability (empty: every capability's subset).
    # "all" alone: one model per method, evaluated on every capability.
    trained_capabilities: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


PROTOCOLS = {
    # Where selection can matter (selection-quality.md §3.3): 2,000 rows, 500 of them in-domain-like, with the
    # oracle-by-source ceiling, stratified random over 5 seeds and per-item metrics on 200+ items per capability.
    "cpu-mix-2k": Protocol(
        name="cpu-mix-2k",
        pool_file="cpu-mix-2k.parquet",
        slice_rows=0,
        budget_ratio=0.1,
        random_seeds=(0, 1, 2, 3, 4),
        target_size=256,
        methods=("nait_c", "nait_c_lda", "nait", "rds_round_robin", "length", "less", "bids", "g2is", "oracle_source",
                 "random_stratified", "full"),
        train={"mode": "full", "epochs": 1, "learning_rate": 5e-5, "batch_size": 8, "max_length": 512, "seed": 0},
        # The ranking uses the 200 forward-only items per capability; exact match and pass@1 are reported
        # on 8 generated rows per benchmark, a quarter of an evaluation's time (24 rows could not separate
        # methods in cpu-2k either).
        evaluation={"sample_size": 8, "max_new_tokens": 160, "code_timeout_s": 10.0, "items_per_capability": 200},
        mix=CPU_MIX_2K,
        # The gradient methods' warmup keeps 2 of the official 4 epochs (checkpoints): per-example gradients of
        # the 2,000 rows cost ~1 row/s per core and checkpoint here.
        features={"warmup_adapter": {"config": {"epochs": 2}}},
        # Two training orders of every deterministic subset: a method with one run cannot get an interval.
        order_replicates={"nait_c": 2, "nait_c_lda": 2, "nait": 2, "rds_round_robin": 2, "length": 2, "less": 2,
                          "bids": 2, "g2is": 2, "oracle_source": 2},
        evaluate_base=True,
        random_reference="random_stratified",
        trained_capabilities=("all",),
    ),
    # Sized for the 2-core CPU machine: the full-pool reference dominates (it trains on every row), and
    # fine-tuning runs at ~170-185 tokens/s there, so a 10k slice alone would need ~95 min for that model.
    "cpu-2k": Protocol(
        name="cpu-2k",
        pool_file="alpaca_cleaned.parquet",
        slice_rows=2000,
        budget_ratio=0.1,
        random_seeds=(0, 1, 2),
        target_size=256,
        methods=("nait", "random", "full"),
        train={"mode": "full", "epochs": 1, "learning_rate": 5e-5, "batch_size": 8, "max_length": 512, "seed": 0},
        evaluation={"sample_size": 24, "max_new_tokens": 160, "code_timeout_s": 10.0, "items_per_capability": 200},
    ),
    # A few minutes end to end: for trying the protocol machinery, not for conclusions.
    "smoke": Protocol(
        name="smoke",
        pool_file="alpaca_cleaned.parquet",
        slice_rows=40,
        budget_ratio=0.1,
        random_seeds=(0, 1, 2),
        target_size=8,
        methods=("nait", "length", "lp_low", "less", "bids", "g2is", "random", "full"),
        train={"mode": "lora", "epochs": 1, "learning_rate": 2e-4, "batch_size": 4, "max_length": 256, "seed": 0},
        evaluation={"sample_size": 2, "max_new_tokens": 16, "code_timeout_s": 10.0, "items_per_capability": 4},
        # LP's selector sees the whole (40-row) protocol pool; 4 clusters of ~10 rows. The gradient methods:
        # 2 warmup checkpoints, 8 target rows per capability.
        features={"selector_trajectories": {"config": {"slice_rows": 0, "epochs": 2, "max_length": 256}},
                  "selector_clusters": {"config": {"rows_per_cluster": 10}},
                  "warmup_adapter": {"config": {"epochs": 2, "max_length": 256}},
                  "pool_gradients": {"config": {"max_length": 256}},
                  "target_gradients": {"config": {"rows": 8, "max_length": 256}},
                  "gradient_graph": {"config": {"k": 16}}},
        order_replicates={"length": 2},
        evaluate_base=True,
        trained_capabilities=("all",),
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def prepare_inputs(protocol: Protocol, data_dir: Path, input_dir: Path) -> Path:
    """An input folder holding only the protocol's pool file and the target sets, as symlinks; a mixed
    protocol's pool is built there once from the shared pools (seeded, so a rebuild is identical)."""
    pool = data_dir / "pools" / protocol.pool_file
    targets = data_dir / "targets"
    if protocol.mix:
        pool = input_dir / "mixed" / protocol.pool_file
        if not pool.exists():
            from nait_pipeline.lib.data import mixed_pool
            from nait_pipeline.lib.io.lake import write_parquet

            table, report = mixed_pool.build(data_dir / "pools", targets, spec=protocol.mix,
                                             target_size=protocol.target_size)
            write_parquet(table, pool, {"mix_report": report})
    for path in (pool, targets):
        if not path.exists():
            raise FileNotFoundError(f"protocol {protocol.name} needs {path} (is NAIT_DATA_DIR right?)")
    (input_dir / "pools").mkdir(parents=True, exist_ok=True)
    links = {input_dir / "pools" / pool.name: pool, input_dir / "targets": targets}
    for link, target in links.items():
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=target.is_dir())
    stray = [p.name for p in (input_dir / "pools").iterdir() if p.name != pool.name]
    if stray:
        raise FileExistsError(f"{input_dir / 'pools'} holds files outside the protocol: {stray}")
    return input_dir


def compared_subset_versions(layout: LakeLayout, pool_version: str, budget_ratio: float,
                             random_seeds: Sequence[int], methods: Sequence[str] | None = None,
                             capabilities: Sequence[str] | None = None) -> list[str]:
    """The subset versions a comparison covers, all on ``pool_version``: for each method (every
    method with a current subset when ``methods`` is None) the versions its last selection wrote at
    ``budget_ratio``, seeded methods only for ``random_seeds``, only the ``capabilities`` subsets (every
    one when None; methods that select for every capability at once write "all"), and the full pool.

    Read from the `current_subsets` table, so a slot holds what the pipeline selected last, however
    many older versions the lake keeps."""
    wanted_slots = {""} | {f"seed={seed}" for seed in random_seeds}
    chosen = []
    for path in sorted(layout.current_subsets_dir.glob("*.parquet")):
        if path.name.startswith("_"):
            continue
        for row in read_table(path).to_pylist():
            if row["pool_version"] != pool_version or (methods is not None and row["method"] not in methods):
                continue
            if capabilities is not None and row["capability"] not in capabilities:
                continue
            if row["method"] != "full" and not math.isclose(row["budget_ratio"], budget_ratio, rel_tol=1e-9):
                continue
            if row["slot"] in wanted_slots:
                chosen.append(row["subset_version"])
    return sorted(chosen)


def subset_config(protocol: Protocol) -> dict:
    """Run config of every compared method's subsets asset: the protocol's budget and random seeds, for the
    methods whose parameters have them."""
    from nait_pipeline.lib.methods import get_method

    config = {}
    for name in protocol.methods:
        fields = {f.name for f in dataclasses.fields(get_method(name).params)}
        config[f"{name}_subsets"] = {"config": {
            **({"budget_ratio": protocol.budget_ratio} if "budget_ratio" in fields else {}),
            **({"seeds": list(protocol.random_seeds)} if "seeds" in fields else {})}}
    return config


def already_trained(layout: LakeLayout, run_key: str, train_params: dict, model_dir: Path) -> bool:
    """A fine-tune of ``run_key`` with these parameters finished (its record and its model exist): kept."""
    path = layout.finetune_run(run_key)
    return path.exists() and (model_dir / "config.json").exists() and \
        json.loads(read_table(path).column("train_params_json")[0].as_py()) == train_params


def already_evaluated(layout: LakeLayout, run_key: str, eval_params: dict) -> bool:
    """An evaluation of ``run_key`` recorded with these parameters (newer parameters it records beside
    them do not count): kept."""
    path = layout.evaluation(run_key)
    if not path.exists():
        return False
    recorded = json.loads(read_table(path).column("eval_params_json")[0].as_py())
    return all(recorded.get(k) == v for k, v in eval_params.items())
