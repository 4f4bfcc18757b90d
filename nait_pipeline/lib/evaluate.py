"""Model-side evaluation measures: answer log-likelihoods and greedy generation.

Scoring functions for the generated text live in ``metrics``; code runs in ``sandbox``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nait_pipeline.lib.featurize import plan_batches, response_losses
from nait_pipeline.lib.metrics import CHOICES
from nait_pipeline.lib.template import ChatTemplate


def _padded(token_lists: Sequence[list[int]], pad_id: int, left: bool = False):
    import torch

    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        span = slice(width - len(tokens), width) if left else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens)
        mask[row, span] = 1
    return ids, mask


def answer_nll(model, template: ChatTemplate, rows: Sequence[dict], max_length: int = 1024,
               batch_tokens: int = 4096) -> np.ndarray:
    """Mean negative log-likelihood per reference-answer token given the prompt, per row
    (rows hold ``prompt`` and ``answer``); NaN where truncation left no answer token."""
    import torch

    tokens = [template.tokenize(r["prompt"], "", r["answer"], max_length) for r in rows]
    out = np.full(len(rows), np.nan)
    pad_id = template.tokenizer.pad_token_id or 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in plan_batches([len(t.input_ids) for t in tokens], batch_tokens, 32):
            ids, mask = _padded([tokens[i].input_ids for i in batch], pad_id)
            hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            out[batch] = response_losses(model, hidden, ids.to(device), [tokens[i] for i in batch])
    return out


def choice_logliks(model, template: ChatTemplate, prompts: Sequence[str]) -> np.ndarray:
    """[n, 4]: log-probability of answering 'A'..'D' as the first response token of each prompt."""
    import torch

    tokenizer = template.tokenizer
    letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in CHOICES]
    if any(len(ids) != 1 for ids in letter_ids):
        raise ValueError(f"the tokenizer splits a choice letter into several tokens: {letter_ids}")
    letters = [ids[0] for ids in letter_ids]
    prompt_ids = [tokenizer(template.render_prompt(p, ""), add_special_tokens=False)["input_ids"] for p in prompts]
    out = np.zeros((len(prompts), len(CHOICES)))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in plan_batches([len(p) for p in prompt_ids], 4096, 32):
            ids, mask = _padded([prompt_ids[i] for i in batch], tokenizer.pad_token_id or 0, left=True)
            hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            logits = model.get_output_embeddings()(hidden[:, -1]).float()
            out[batch] = torch.log_softmax(logits, -1)[:, letters].cpu().numpy()
    return out


def generate(model, template: ChatTemplate, prompts: Sequence[str], max_new_tokens: int = 256,
             batch_size: int = 8) -> list[str]:
    """Greedy completions of each prompt rendered in the chat template (transformers, any device)."""
    import torch

    tokenizer = template.tokenizer
    prompt_ids = [tokenizer(template.render_prompt(p, ""), add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))
    out = [""] * len(prompts)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask = _padded([prompt_ids[i] for i in batch], tokenizer.pad_token_id or 0, left=True)
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
            for row, index in enumerate(batch):
                out[index] = tokenizer.decode(generated[row, ids.shape[1]:], skip_special_tokens=True)
    return out
