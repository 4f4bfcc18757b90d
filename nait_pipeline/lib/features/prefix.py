"""The constant template prefix: the tokens every rendered example starts with, and their states.

Under causal attention the states of a shared prefix do not depend on what follows, so one forward of
the prefix gives, per layer, the sum ``S_l`` of its P states that every stored token mean contains
(NAIT-C removes it exactly) and the first-token state ``f_l`` (the attention sink's massive
activations). The prefix is measured, not assumed: it is the longest token prefix shared by every
rendered prompt given (0 when a template renders examples without a common start).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nait_pipeline.lib.models.model_io import ModelInfo
from nait_pipeline.lib.models.template import ChatTemplate
from nait_pipeline.lib.io.lake import read_table


def common_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Tokens every list shares at its start (0 when they share none or there is none)."""
    if not token_lists:
        return 0
    first = token_lists[0]
    length = min(len(t) for t in token_lists)
    for tokens in token_lists[1:]:
        length = next((k for k in range(length) if tokens[k] != first[k]), length)
    return length


def prompt_tokens(template: ChatTemplate, rows: Sequence[dict], max_length: int) -> list[list[int]]:
    """Each row's tokens before its first assistant token (a conversation's own system turn included)."""
    tokenized = (template.tokenize_row(r, max_length) for r in rows)
    return [t.input_ids[: t.response_start] for t in tokenized]


def prefix_states(model, tokens: Sequence[int], hidden_states: str = "hf_output") -> tuple[np.ndarray, np.ndarray]:
    """Per decoder layer: the sum of the prefix's states and its first state, [L, d] float64 each, with
    the featurizer's hidden-state convention (HF output: the last layer after the final norm)."""
    import torch

    if hidden_states != "hf_output":
        raise ValueError(f"prefix states are computed for the hf_output convention, not {hidden_states!r}")
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    if not tokens:
        return np.zeros((layers, width)), np.zeros((layers, width))
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([list(tokens)], device=device), output_hidden_states=True,
                          use_cache=False)
    states = torch.stack([h[0].float() for h in out.hidden_states[1:]])  # [L, P, d]
    return states.sum(1).double().cpu().numpy(), states[:, 0].double().cpu().numpy()


def prefix_table(layout, model, template: ChatTemplate, record: ModelInfo, max_length: int = 512):
    """Measure the prefix every rendered pool and in-domain prompt of the lake starts with, run it through
    ``model`` once, and return (the per-layer table to store, its metadata, the first states)."""
    import pyarrow as pa

    from nait_pipeline.lib.io.hashing import sha256_json
    from nait_pipeline.lib.io.pool_view import EXAMPLE_COLUMNS, PoolView

    rows = PoolView.open(layout).kept(EXAMPLE_COLUMNS).to_pylist()
    for path in sorted(layout.target_selection("_").parent.glob("*.parquet")):
        rows += [{"instruction": r["prompt"], "input": "", "output": ""}
                 for r in read_table(path, columns=["prompt"]).to_pylist()]
    tokens = prompt_tokens(template, rows, max_length=max_length)
    length = common_prefix_length(tokens)
    sums, first = prefix_states(model, tokens[0][:length] if tokens else [])
    text = template.tokenizer.decode(tokens[0][:length]) if length else ""
    version = sha256_json({"model": record.model_id, "template": record.template_hash,
                           "tokens": tokens[0][:length] if tokens else []})[:16]
    table = pa.table({"layer": np.arange(1, len(sums) + 1), "prefix_sum": list(sums.astype(np.float32)),
                      "first_state": list(first.astype(np.float32))})
    meta = {"prefix_tokens": length, "prefix_text": text, "prefix_version": version, "model_id": record.model_id,
            "template_hash": record.template_hash, "rows_checked": len(rows)}
    return table, meta, first
