"""Words and word n-grams of many texts at once, for decontamination and near-duplicate detection.

Texts are lower-cased and split on anything that is not a letter or digit by Arrow (vectorised, Unicode
aware); words are dictionary-encoded to integer ids, and an n-gram is a 64-bit polynomial hash of its
word ids computed with NumPy over all texts at once (a window never spans two texts).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NON_WORD = r"[^\p{L}\p{N}]+"
_BASE = np.uint64(0x9E3779B97F4A7C15)


def words(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Every text's words (flattened) and the index of the text each word belongs to."""
    split = pc.split_pattern_regex(pc.utf8_lower(pc.fill_null(texts, "")), NON_WORD)
    flat = pc.list_flatten(split)
    parents = pc.list_parent_indices(split).to_numpy()
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    return flat.filter(pa.array(keep)), parents[keep]


def ngram_hashes(ids: np.ndarray, parents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``n`` consecutive words inside one text, and that text's index."""
    if len(ids) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    windows = len(ids) - n + 1
    values = ids.astype(np.uint64) + np.uint64(1)
    h = np.zeros(windows, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _BASE + values[k: k + windows]
    inside = parents[: windows] == parents[n - 1:]
    return h[inside], parents[: windows][inside]


def normalised(texts: list[str]) -> list[str]:
    """Texts as their words joined by one space (the same words the n-grams are made of)."""
    split = pc.split_pattern_regex(pc.utf8_lower(pa.array(texts, pa.string())), NON_WORD)
    return pc.utf8_trim(pc.binary_join(split, " "), " ").to_pylist()


def word_ids(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Every text's words as integer ids (one per distinct word) and the index of the text of each."""
    flat, parents = words(texts)
    return pc.dictionary_encode(flat).indices.to_numpy(), parents
