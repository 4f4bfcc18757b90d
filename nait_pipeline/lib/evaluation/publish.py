"""A selected subset as a publishable dataset: its rows with scores and ranks, and a dataset card.

``publish(layout, subset_version, out_dir)`` writes a folder that ``datasets.load_dataset("parquet",
data_dir=out_dir)`` loads (``data/train-00000-of-00001.parquet``) and a ``README.md`` whose YAML header
is a Hugging Face dataset card's (license, size category, task categories, the data files) and whose body
is generated from the lake alone: method and parameters, pool version and sources, model, template, code
commit, selection cost, diagnostics, contamination and near-duplicate counts, and the protocol intervals
of this subset's method where a comparison was run. A subset whose rows changed since it was selected is
refused, as ``export`` refuses it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nait_pipeline.lib.io.lake import atomic_dir, read_metadata, read_table
from nait_pipeline.lib.io.layout import LakeLayout
from nait_pipeline.lib.io.pool_view import EXAMPLE_COLUMNS, PoolView
from nait_pipeline.lib.methods.audit import subset_rows
from nait_pipeline.lib.models.template import row_messages

DATA_FILE = "data/train-00000-of-00001.parquet"
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
# What the shared pools' sources state (../shared/data/README.md); other pools: set `[licenses]` in the
# settings file, else the card says the license is unknown.
KNOWN_LICENSES = {"alpaca_cleaned": "cc-by-nc-4.0", "code_alpaca_2k": "cc-by-nc-4.0",
                  "dolly_alpagasus_3k": "cc-by-sa-3.0", "flan_cot": "apache-2.0"}


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def _intervals(layout: LakeLayout, label: str) -> list[dict]:
    folder = layout.comparison_intervals("x").parent
    rows = []
    for path in sorted(folder.glob("*.parquet")) if folder.exists() else []:
        if path.name.startswith("_"):
            continue
        table = read_table(path)
        rows += [r for r in table.to_pylist() if r["method"] == label]
    return rows


def card_markdown(layout: LakeLayout, subset_version: str, rows: pa.Table, licenses: dict[str, str]) -> str:
    """The dataset card: a YAML header and a body generated from the lake."""
    from nait_pipeline.lib.evaluation.comparison import method_label, selection_cost

    lineage = read_table(layout.lineage(subset_version)).to_pylist()[0]
    params = json.loads(lineage["params_json"])
    pools = Counter(rows.column("pool").to_pylist())
    sources = Counter(rows.column("source").to_pylist())
    license_ids = sorted({licenses.get(pool, "unknown") for pool in pools})
    diagnostics = read_table(layout.subset_diagnostics(subset_version)).to_pylist()[0] \
        if layout.subset_diagnostics(subset_version).exists() else {}
    try:
        seconds, tokens = selection_cost(layout, lineage["method"], params.get("score_versions") or {})
        cost = f"{seconds:,.1f} s of compute, {tokens:,} tokens through the model (from the lake's own records)"
    except (FileNotFoundError, ValueError) as exc:
        cost = f"not recorded ({exc})"
    label = method_label(lineage["method"], lineage["capability"])
    intervals = _intervals(layout, label)
    header = ["---", "license:", *[f"- {lid}" for lid in license_ids], f"size_categories:\n- {_size_category(len(rows))}",
              "task_categories:\n- text-generation", "language:\n- en", "tags:\n- instruction-tuning\n- data-selection",
              f"- {lineage['method']}", "configs:\n- config_name: default\n  data_files:\n  - split: train",
              f"    path: {DATA_FILE}", "---"]
    lines = [f"# {subset_version}", "",
             f"{len(rows):,} instruction-tuning rows chosen by **{lineage['method']}** for **{lineage['capability']}** "
             f"out of {lineage['n_pool']:,} candidates ({lineage['n_selected'] / max(1, lineage['n_pool']):.1%}), "
             "published by nait_pipeline. Each row keeps its pool id, source, rank and the score it was ranked by.", "",
             "## Provenance", "",
             "| | |", "|---|---|",
             f"| method | `{lineage['method']}` |", f"| capability | `{lineage['capability']}` |",
             f"| parameters | `{json.dumps(params, sort_keys=True)}` |",
             f"| pool version | `{lineage['pool_version']}` |",
             f"| model | `{lineage['model_id']}` |", f"| chat template hash | `{lineage['template_hash']}` |",
             f"| code commit | `{lineage['code_commit']}` |", f"| selected at | {lineage['created_at']} |",
             f"| selected ids (sha256) | `{lineage['selected_ids_sha256']}` |",
             f"| selection cost | {cost} |", "",
             "## Sources and licenses", "",
             "| pool | rows | license |", "|---|---|---|",
             *[f"| {pool} | {count:,} | {licenses.get(pool, 'unknown: set it under [licenses] in nait_settings.toml')} |"
               for pool, count in pools.most_common()], "",
             "By source: " + ", ".join(f"{source} {count:,}" for source, count in sources.most_common()) + ".", "",
             "## Diagnostics", ""]
    if diagnostics:
        def value(name: str, fmt: str) -> str:
            item = diagnostics.get(name)
            return "not checked" if item is None or (isinstance(item, float) and math.isnan(item)) else format(item, fmt)

        lines += ["| measure | value |", "|---|---|",
                  f"| mean response length / the pool's | {value('length_ratio', '.2f')} |",
                  f"| Spearman(score, length) | {value('spearman_length', '.2f')} |",
                  f"| overlap with the longest rows | {value('overlap_longest', '.2f')} |",
                  f"| overlap with a random subset | {value('overlap_random', '.2f')} |",
                  f"| contaminated rows held (test items in a row) | {value('contaminated_selected', 'd')} |",
                  f"| contaminated rows left out of the candidates | {value('contaminated_excluded', 'd')} |",
                  f"| contaminated rows it would have taken | {value('contaminated_would_take', 'd')} |",
                  f"| near-duplicate share | {value('duplicate_share', '.3f')} |", ""]
    else:
        lines += ["No diagnostics were recorded for this subset.", ""]
    lines += ["## Does it help? Protocol results", ""]
    if intervals:
        lines += [f"Fine-tuned on subsets of `{label}` against stratified random subsets of the same size "
                  "(one-sided 95 % intervals of the difference; see the project's protocol):", "",
                  "| comparison | evaluated on | metric | Δ [low, high] | better |", "|---|---|---|---|---|",
                  *[f"| {r['comparison']} | {r['eval_capability']} | {r['metric']} | {r['label']} | "
                    f"{'yes' if r['better'] else 'no'} |" for r in intervals], ""]
    else:
        lines += [f"None were run for `{label}`: no protocol has fine-tuned and evaluated this method yet.", ""]
    lines += ["## Loading", "", "```python", "import datasets", "",
              'rows = datasets.load_dataset("parquet", data_dir="<this folder>")["train"]', "```", ""]
    return "\n".join(header) + "\n\n" + "\n".join(lines)


def build_card(layout: LakeLayout, subset_version: str, licenses: dict[str, str] | None = None) -> tuple[pa.Table, str]:
    """The rows a publication holds and its dataset card."""
    licenses = {**KNOWN_LICENSES, **(licenses or {})}
    rows = subset_rows(layout, subset_version)  # refuses rows changed since the selection
    pools = PoolView.open(layout).rows(rows.column("example_id").to_pylist(), ["pool"])
    table = pa.table({
        "example_id": rows.column("example_id"), "rank": rows.column("rank"), "score": rows.column("score"),
        "pool": pa.array([r["pool"] for r in pools], pa.string()),
        "source": rows.column("source"), "instruction": rows.column("instruction"), "input": rows.column("input"),
        "output": rows.column("output"),
        # Every row as chat turns (a triple as one exchange): a conversation keeps its turns.
        "messages": pa.array([[{"role": t["role"], "content": t["content"]} for t in row_messages(r)]
                              for r in rows.select(list(EXAMPLE_COLUMNS)).to_pylist()], MESSAGES_TYPE),
        "subset_version": pa.array([subset_version] * len(rows), pa.string())})
    return table, card_markdown(layout, subset_version, table, licenses)


def publish(layout: LakeLayout, subset_version: str, out_dir: Path, licenses: dict[str, str] | None = None) -> Path:
    """Write the subset's rows and its dataset card into ``out_dir`` (atomically; a folder that is not an
    earlier publication is never replaced); returns the folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "lineage.json").exists():
        raise FileExistsError(f"{out_dir} exists and is not a publication of nait_pipeline: choose an empty folder")
    table, card = build_card(layout, subset_version, licenses)
    with atomic_dir(out_dir) as tmp:
        (tmp / "data").mkdir()
        pq.write_table(table, tmp / DATA_FILE)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "lineage.json").write_text(json.dumps(
            {**read_table(layout.lineage(subset_version)).to_pylist()[0], "pool_metadata": read_metadata(layout.pool_examples)},
            default=str, indent=2))
    return Path(out_dir)
