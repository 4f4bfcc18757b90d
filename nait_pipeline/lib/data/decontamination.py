"""Which pool rows contain a test item the loop evaluates on: word n-gram coverage, per field.

The rule (open-instruct's decontamination scores it this way): a test item's text is cut into word
n-grams (n = 13 by default; lower-cased, split on anything that is not a letter or digit); a pool
row's field covers the item by the share of the item's distinct n-grams that also occur in the field.
A field at or above ``threshold`` (0.5) is contaminated; so is a row whose instruction (with its input)
is the item's prompt exactly (after the same normalisation), whatever its length. An item shorter than n
words is one n-gram of its own length, checked when it has at least ``min_words`` words (shorter ones,
such as "not True is", would match unrelated rows; they are left to the exact-prompt rule).

Fast enough for 100k rows against ~23k items on two cores (``bench/decontamination.py``): words are
dictionary-encoded by Arrow, n-grams hashed as 64-bit polynomials over the word ids with NumPy, and
the pool's n-grams matched against the sorted set of the test items' n-grams; only the (rare) matches
go back to Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nait_pipeline.lib.data.text import ngram_hashes, normalised, word_ids
from nait_pipeline.lib.io.contract import CONTAMINATION_SCHEMA
from nait_pipeline.lib.io.lake import read_table

ASSET = "pool_contamination"  # the asset that writes the table; every selection is downstream of it
FIELDS = ("instruction", "input", "output")
NGRAM = 13
THRESHOLD = 0.5
MIN_WORDS = 6
SCHEMA = CONTAMINATION_SCHEMA


@dataclass
class Contamination:
    table: pa.Table  # SCHEMA: one row per (pool row, field, test item) at or above the threshold
    stats: dict = field(default_factory=dict)

    @property
    def contaminated_ids(self) -> set[str]:
        return set(self.table.column("example_id").to_pylist())


def find_contamination(pool: pa.Table, tests: pa.Table, n: int = NGRAM, threshold: float = THRESHOLD,
                       min_words: int = MIN_WORDS) -> Contamination:
    """``pool``: example_id + FIELDS; ``tests``: example_id, capability, file (the benchmark) and prompt."""
    if n < 1 or not 0 < threshold <= 1:
        raise ValueError(f"n must be positive and the threshold in (0, 1], got n={n}, threshold={threshold}")
    started = time.perf_counter()
    n_rows = len(pool)
    texts = pa.chunked_array([pool.column(f).combine_chunks() for f in FIELDS] + [tests.column("prompt").combine_chunks()]
                             ).combine_chunks().cast(pa.string())
    ids, parents = word_ids(texts)  # one id per distinct word, pool and tests alike
    is_test_word = parents >= len(FIELDS) * n_rows
    test_ids, test_parents = ids[is_test_word], parents[is_test_word] - len(FIELDS) * n_rows
    pool_ids, pool_parents = ids[~is_test_word], parents[~is_test_word]
    test_lengths = np.bincount(test_parents, minlength=len(tests))

    found: dict[tuple[int, int], float] = {}  # (pool text index, test item) -> coverage
    lengths = sorted({n} | {int(m) for m in np.unique(test_lengths) if min_words <= m < n})
    for size in lengths:
        items = np.flatnonzero(test_lengths >= n) if size == n else np.flatnonzero(test_lengths == size)
        if not len(items):
            continue
        t_hash, t_item = ngram_hashes(test_ids, test_parents, size)
        wanted = np.isin(t_item, items)
        pairs = np.unique(np.stack([t_hash[wanted], t_item[wanted].astype(np.uint64)], 1), axis=0)
        t_hash, t_item = pairs[:, 0], pairs[:, 1].astype(np.int64)
        grams_per_item = np.bincount(t_item, minlength=len(tests))
        order = np.argsort(t_hash, kind="stable")
        t_hash, t_item = t_hash[order], t_item[order]
        p_hash, p_text = ngram_hashes(pool_ids, pool_parents, size)
        position = np.searchsorted(t_hash, p_hash)
        hit = position < len(t_hash)
        hit[hit] = t_hash[position[hit]] == p_hash[hit]
        matched = np.unique(np.stack([p_hash[hit], p_text[hit].astype(np.uint64)], 1), axis=0)
        counts: dict[tuple[int, int], int] = {}
        for gram, text in matched:
            start = np.searchsorted(t_hash, gram)
            stop = np.searchsorted(t_hash, gram, side="right")
            for item in t_item[start:stop]:
                key = (int(text), int(item))
                counts[key] = counts.get(key, 0) + 1
        for (text, item), count in counts.items():
            coverage = count / grams_per_item[item]
            if coverage >= threshold:
                found[(text, item)] = max(found.get((text, item), 0.0), coverage)

    # The exact prompt: instruction (with its input) equal to the item's prompt.
    prompts = normalised([p or "" for p in tests.column("prompt").to_pylist()])
    by_prompt: dict[str, list[int]] = {}
    for item, prompt in enumerate(prompts):
        if prompt:
            by_prompt.setdefault(prompt, []).append(item)
    instructions = normalised([f"{i or ''} {x or ''}" for i, x in zip(pool.column("instruction").to_pylist(),
                                                                       pool.column("input").to_pylist())])
    exact = {(row, item) for row, text in enumerate(instructions) for item in by_prompt.get(text, ())}

    example_ids = pool.column("example_id").to_pylist()
    test_rows = tests.select(["example_id", "capability", "file"]).to_pylist()
    records = {}
    for (text, item), coverage in found.items():
        row, field_index = text % n_rows, text // n_rows
        records[(row, FIELDS[field_index], item)] = (coverage, (row, item) in exact)
    for row, item in exact:
        records.setdefault((row, "instruction", item), (1.0, True))
    rows = [{"example_id": example_ids[row], "field": name, "benchmark": test_rows[item]["file"].removesuffix(".parquet"),
             "capability": test_rows[item]["capability"], "test_id": test_rows[item]["example_id"],
             "coverage": round(coverage, 4), "exact_prompt": is_exact}
            for (row, name, item), (coverage, is_exact) in sorted(records.items())]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    stats = {"pool_rows": n_rows, "test_items": len(tests), "ngram": n, "threshold": threshold, "min_words": min_words,
             "contaminated_rows": len({r["example_id"] for r in rows}), "matches": len(rows),
             "seconds": round(time.perf_counter() - started, 2)}
    return Contamination(table, stats)


def same_prompts(tests: list[dict], in_domain: list[dict]) -> list[tuple[str, str]]:
    """(test id, in-domain id) pairs whose prompts are the same words (a held-out row that is not)."""
    if not tests or not in_domain:
        return []
    seen: dict[str, str] = {}
    for row, text in zip(in_domain, normalised([r["prompt"] or "" for r in in_domain])):
        if text:
            seen.setdefault(text, row["example_id"])
    return [(row["example_id"], seen[text]) for row, text in zip(tests, normalised([r["prompt"] or "" for r in tests]))
            if text in seen]


def decontaminate_lake(layout, capabilities: list[str], n: int = NGRAM, threshold: float = THRESHOLD,
                       min_words: int = MIN_WORDS) -> tuple[Contamination, str]:
    """Check the lake's kept pool rows against the test split of every capability and write
    ``pool_contamination``; returns the result and its version (pool, test items, rule)."""

    from nait_pipeline.lib.io.hashing import sha256_json, sha256_lines
    from nait_pipeline.lib.io.lake import write_parquet
    from nait_pipeline.lib.io.pool_view import PoolView

    pool = PoolView.open(layout)
    missing = [c for c in capabilities if not layout.target_test(c).exists()]
    if missing:
        raise FileNotFoundError(f"no test split in the lake for {missing}: materialize target_test_sets for them first")
    tests = pa.concat_tables([read_table(layout.target_test(c), columns=["example_id", "capability", "file", "prompt"])
                              for c in capabilities]) if capabilities else \
        pa.table({"example_id": [], "capability": [], "file": [], "prompt": []}, pa.schema(
            [(name, pa.string()) for name in ("example_id", "capability", "file", "prompt")]))
    empty = pc.equal(pc.utf8_trim_whitespace(pc.fill_null(tests.column("prompt"), "")), "")
    result = find_contamination(pool.kept(["example_id", *FIELDS]), tests.filter(pc.invert(empty)), n, threshold,
                                min_words)
    result.stats["items_without_text"] = tests.filter(empty).column("example_id").to_pylist()
    version = sha256_json({"pool": pool.version, "rule": [n, threshold, min_words], "code": "1",
                           "tests": sha256_lines(f"{i}\t{p}" for i, p in zip(tests.column("example_id").to_pylist(),
                                                                            tests.column("prompt").to_pylist()))})[:16]
    write_parquet(result.table, layout.pool_contamination, {"contamination_version": version,
                                                            "pool_version": pool.version, "capabilities": capabilities,
                                                            "stats": result.stats})
    return result, version


def read_contaminated(layout, pool_version: str) -> tuple[set[str], str]:
    """Ids of the kept pool rows the stored check found contaminated, checked to be of ``pool_version``,
    and the check's version."""

    from nait_pipeline.lib.io.lake import read_metadata

    path = layout.pool_contamination
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {ASSET} first (or select with "
                                "exclude_contaminated=false)")
    meta = read_metadata(path)
    checked = meta.get("pool_version")
    if checked != pool_version:
        raise ValueError(f"pool_contamination was checked on pool version {checked}, the pool is now {pool_version}: "
                         f"re-materialize {ASSET}")
    return set(read_table(path, columns=["example_id"]).column("example_id").to_pylist()), meta["contamination_version"]
