"""Model-side evaluation measures: answer log-likelihoods and greedy generation.

Scoring functions for the generated text live in ``metrics``; code runs in ``sandbox``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nait_pipeline.lib.evaluation.metrics import CHOICES
from nait_pipeline.lib.features.featurize import plan_batches, response_losses
from nait_pipeline.lib.models.template import ChatTemplate


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


GENERATION_BACKENDS = ("auto", "vllm", "transformers")


def choose_generation_backend(requested: str = "auto") -> str:
    """``auto``: vLLM when a CUDA GPU and the ``vllm`` package (the ``gpu`` extra) are both present,
    transformers otherwise. Asking for ``vllm`` without them is an error, not a silent fallback."""
    import importlib.util

    import torch

    if requested not in GENERATION_BACKENDS:
        raise ValueError(f"generation backend must be one of {GENERATION_BACKENDS}, got {requested!r}")
    if requested == "transformers":
        return requested
    has_gpu = torch.cuda.is_available()
    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "vllm" and not (has_gpu and has_vllm):
        missing = "a CUDA GPU" if not has_gpu else "the vllm package (pip install -e '.[gpu]')"
        raise RuntimeError(f"generation backend 'vllm' needs {missing}; use 'auto' or 'transformers'")
    return "vllm" if has_gpu and has_vllm else "transformers"


class TransformersGenerator:
    """Greedy generation with the already-loaded model (CPU or GPU)."""

    def __init__(self, model, template: ChatTemplate):
        self.model, self.template = model, template

    def __call__(self, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
        return generate(self.model, self.template, prompts, max_new_tokens, batch_size)


class VllmGenerator:
    """Greedy generation with vLLM on the GPU, fed the same token ids as the transformers path
    (the chat template is rendered by the pipeline, not by vLLM), stopping at the template's EOS."""

    def __init__(self, model_dir, template: ChatTemplate, gpu_memory_utilization: float = 0.4, seed: int = 0):
        from vllm import LLM

        self.template = template
        # The transformers model used for likelihoods shares the GPU, hence the memory cap.
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization)

    def __call__(self, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
        from vllm import SamplingParams

        tokenizer = self.template.tokenizer
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True,
                                stop_token_ids=[tokenizer.eos_token_id])
        requests = [{"prompt_token_ids": tokenizer(self.template.render_prompt(p, ""), add_special_tokens=False)
                     ["input_ids"]} for p in prompts]
        # vLLM schedules its own batches; batch_size only shapes the transformers path.
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]


def make_generator(backend: str, model, model_dir, template: ChatTemplate):
    """The generator for a resolved backend name (see ``choose_generation_backend``)."""
    if backend == "vllm":
        return VllmGenerator(model_dir, template)
    return TransformersGenerator(model, template)
