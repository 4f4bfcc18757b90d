"""Per-item scores that move at 135M, from forward passes only (selection-quality.md section 3.3).

Every item gets one row ``(benchmark, item_id, metric, value, status, reason)``; higher is better:

- ``gold_logprob_per_token``: minus the mean NLL per token of the gold solution given the prompt
  (GSM8K: the reference solution with its ``<<...>>`` calculator annotations stripped; MBPP: the
  reference code given the task; HumanEval: the canonical body given the signature and docstring);
- ``option_logprob``: ``log p(gold) - logsumexp_o log p(o)`` over the item's option set, each option
  scored by the log-likelihood of its tokens as the response (MMLU: the letters A-D; BBH: the
  "(A) ..." options of the prompt, or the task's label set such as True/False).

An item whose metric cannot be computed (no option set parsed, an empty reference, a reference
truncated away) is recorded with ``status = "not_computable"`` and its reason, never dropped.
Aggregates are means over the computable items.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nait_pipeline.lib.io.hashing import sha256_text
from nait_pipeline.lib.models.template import ChatTemplate

GOLD = "gold_logprob_per_token"
OPTION = "option_logprob"
OK, NOT_COMPUTABLE = "ok", "not_computable"
# BBH tasks whose answers come from a fixed label set rather than "(A)" options in the prompt.
BBH_LABEL_SETS = {
    "boolean_expressions": ["True", "False"],
    "causal_judgement": ["Yes", "No"],
    "navigate": ["Yes", "No"],
    "sports_understanding": ["yes", "no"],
    "web_of_lies": ["Yes", "No"],
    "formal_fallacies": ["valid", "invalid"],
}
OPTION_LINE = re.compile(r"^\((?P<label>[A-R])\)\s", re.MULTILINE)


@dataclass(frozen=True)
class ItemScore:
    benchmark: str
    item_id: str
    metric: str
    value: float | None
    status: str = OK
    reason: str = ""


def strip_calculator(text: str) -> str:
    """GSM8K's ``<<48/2=24>>`` annotations removed: the model is scored on the solution a person reads."""
    return re.sub(r"<<[^<>]*>>", "", text)


def stratified_sample(rows: Sequence[dict], per_stratum: int, stratum, seed: int = 0) -> list[dict]:
    """At most ``per_stratum`` rows of each stratum, the smallest hashes of (seed, id), in id order:
    the same items for every model, independent of row order."""
    chosen = []
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(stratum(row), []).append(row)
    for key in sorted(groups):
        ranked = sorted(groups[key], key=lambda r: (sha256_text(f"{seed}:{r['example_id']}"), r["example_id"]))
        chosen += ranked[:per_stratum]
    return sorted(chosen, key=lambda r: r["example_id"])


def bbh_options(task: str, prompt: str) -> list[str] | None:
    """The option set of a BBH item: "(A)".."(R)" lines of the prompt, else the task's label set;
    None for free-form tasks (dyck_languages, multistep_arithmetic_two, object_counting, word_sorting)."""
    labels = OPTION_LINE.findall(prompt)
    if len(labels) >= 2:
        return [f"({label})" for label in labels]
    return BBH_LABEL_SETS.get(task.removeprefix("bbh/"))


def gold_reference(capability: str, row: dict) -> str:
    answer = row.get("answer") or ""
    return strip_calculator(answer) if row.get("task") == "gsm8k" else answer


def gold_scores(model, template: ChatTemplate, rows: Sequence[dict], benchmark: str, max_length: int = 1024
                ) -> list[ItemScore]:
    """``gold_logprob_per_token`` of each row's reference (``answer`` field, already prepared)."""
    from nait_pipeline.lib.evaluation.evaluate import answer_nll

    out: list[ItemScore] = []
    usable = [r for r in rows if r["answer"].strip()]
    nll = answer_nll(model, template, usable, max_length) if usable else np.array([])
    by_id = dict(zip((r["example_id"] for r in usable), nll))
    for row in rows:
        if not row["answer"].strip():
            out.append(ItemScore(benchmark, row["example_id"], GOLD, None, NOT_COMPUTABLE, "empty reference"))
        elif not np.isfinite(by_id[row["example_id"]]):
            out.append(ItemScore(benchmark, row["example_id"], GOLD, None, NOT_COMPUTABLE,
                                 f"the reference was truncated away at {max_length} tokens"))
        else:
            out.append(ItemScore(benchmark, row["example_id"], GOLD, -float(by_id[row["example_id"]])))
    return out


def option_loglik(model, template: ChatTemplate, prompt: str, options: Sequence[str]) -> np.ndarray:
    """log p(option | prompt) of each option: the sum of its tokens' log-probabilities as the response.

    The rendered prompt is the same for every option, so it goes through the model once and its key/value
    cache serves every option (a BBH item has up to 18 options: a padded batch that re-ran the prompt for
    each option made the reasoning items most of an evaluation's time). Only the prefix's last position
    needs logits: the LM head (a fifth of this model's per-token FLOPs) runs on that row alone."""
    import torch

    from nait_pipeline.lib.evaluation.evaluate import _padded

    tokens = [template.tokenize(prompt, "", option, 2048) for option in options]
    shared = _shared_prefix_length([t.input_ids for t in tokens], min(t.response_start for t in tokens))
    device = next(model.parameters()).device
    with torch.inference_mode():
        prefix = model(input_ids=torch.tensor([tokens[0].input_ids[:shared]], device=device), use_cache=True,
                       logits_to_keep=1)
        cache = prefix.past_key_values
        cache.batch_repeat_interleave(len(options))
        suffix_ids, suffix_mask = _padded([t.input_ids[shared:] for t in tokens], template.tokenizer.pad_token_id or 0)
        mask = torch.cat([torch.ones((len(options), shared), dtype=torch.long), suffix_mask], 1)
        logits = model(input_ids=suffix_ids.to(device), attention_mask=mask.to(device), past_key_values=cache).logits
        # predicted[:, j] is the distribution of suffix token j: the prefix's last position predicts the first
        predicted = torch.cat([prefix.logits[:, -1:].expand(len(options), 1, -1), logits[:, :-1]], 1)
        logprobs = torch.log_softmax(predicted.float(), -1)
    out = np.zeros(len(options))
    for row, t in enumerate(tokens):
        # the option's own tokens (the template's end-of-turn after it is the same for every option)
        end = t.response_start + len(template.tokenizer(options[row], add_special_tokens=False)["input_ids"])
        positions = torch.arange(t.response_start, min(end, len(t.input_ids))) - shared
        out[row] = float(logprobs[row, positions, suffix_ids[row, positions]].sum())
    return out


def _shared_prefix_length(token_lists: Sequence[list[int]], limit: int) -> int:
    """Tokens every list starts with, at most ``limit`` (the first response token's position), so every
    option token is in the per-option suffix and the first is predicted by the shared prefix's last logits."""
    shared = 0
    while shared < limit and all(t[shared] == token_lists[0][shared] for t in token_lists):
        shared += 1
    if shared == 0:
        raise ValueError("the rendered options share no prompt token: the template must put the prompt first")
    return shared


def normalised_option_score(logliks: np.ndarray, gold: int) -> float:
    """log p(gold) - logsumexp over the options: the log-probability of the gold option within the set."""
    top = logliks.max()
    return float(logliks[gold] - (top + np.log(np.exp(logliks - top).sum())))


def bbh_scores(model, template: ChatTemplate, rows: Sequence[dict]) -> list[ItemScore]:
    out = []
    for row in rows:
        task = row["task"]
        options = bbh_options(task, row["prompt"])
        gold = (json.loads(row.get("extra_json") or "{}").get("target") or row["answer"]).strip()
        if options is None:
            out.append(ItemScore(task, row["example_id"], OPTION, None, NOT_COMPUTABLE, "free-form answer: no option set"))
        elif gold not in options:
            out.append(ItemScore(task, row["example_id"], OPTION, None, NOT_COMPUTABLE,
                                 f"gold {gold!r} not among the parsed options {options}"))
        else:
            out.append(ItemScore(task, row["example_id"], OPTION, normalised_option_score(
                option_loglik(model, template, row["prompt"], options), options.index(gold))))
    return out


def mmlu_scores(model, template: ChatTemplate, rows: Sequence[dict]) -> list[ItemScore]:
    from nait_pipeline.lib.evaluation.evaluate import CHOICES, choice_logliks

    logliks = choice_logliks(model, template, [r["prompt"] for r in rows]) if rows else np.zeros((0, 4))
    out = []
    for row, values in zip(rows, logliks):
        gold = row["answer"].strip()
        if gold not in CHOICES:
            out.append(ItemScore(row["task"], row["example_id"], OPTION, None, NOT_COMPUTABLE,
                                 f"gold {gold!r} is not a letter A-D"))
        else:
            out.append(ItemScore(row["task"], row["example_id"], OPTION,
                                 normalised_option_score(values, CHOICES.index(gold))))
    return out


def aggregate(items: Sequence[ItemScore]) -> dict[tuple[str, str], dict]:
    """Per (benchmark family, metric): mean over computable items, with counts of both kinds."""
    groups: dict[tuple[str, str], list[ItemScore]] = {}
    for item in items:
        groups.setdefault((item.benchmark.split("/")[0], item.metric), []).append(item)
    out = {}
    for key, members in groups.items():
        values = [m.value for m in members if m.status == OK]
        out[key] = {"value": float(np.mean(values)) if values else float("nan"), "n": len(values),
                    "not_computable": len(members) - len(values)}
    return out


def score_capability_items(model, template: ChatTemplate, capability: str, rows: Sequence[dict],
                           per_capability: int) -> list[ItemScore]:
    """The fixed, seeded, stratified item sample of one capability's test rows, scored per item:
    math: GSM8K gold solutions; code: MBPP (3/4) and HumanEval (1/4) reference code; reasoning: BBH,
    an equal share per task, rounded up (free-form tasks recorded as not computable); knowledge: MMLU,
    an equal share per subject; any other capability (yours): the gold answers of its test rows. Fewer
    items than tasks: one item from each of that many tasks."""
    if per_capability <= 0 or not rows:
        return []
    by_task = lambda r: r["task"]  # noqa: E731

    def share(candidates: list[dict], total: int) -> list[dict]:
        strata = sorted({r["task"] for r in candidates})
        if total < len(strata):  # fewer items than tasks: one item from each of `total` tasks, in hash order
            kept = set(sorted(strata, key=lambda t: (sha256_text(f"0:{t}"), t))[:total])
            return stratified_sample([r for r in candidates if r["task"] in kept], 1, by_task)
        return stratified_sample(candidates, -(-total // len(strata)), by_task)

    def gold(candidates: list[dict], benchmark: str) -> list[ItemScore]:
        prepared = [{**r, "answer": gold_reference(capability, r)} for r in candidates]
        return gold_scores(model, template, prepared, benchmark)

    if capability == "math":
        return gold(stratified_sample([r for r in rows if r["task"] == "gsm8k"], per_capability, by_task), "gsm8k")
    if capability == "code":
        mbpp = stratified_sample([r for r in rows if r["task"].startswith("mbpp")], per_capability * 3 // 4, by_task)
        humaneval = stratified_sample([r for r in rows if r["task"].startswith("humaneval")],
                                      per_capability - per_capability * 3 // 4, by_task)
        return gold(mbpp, "mbpp") + gold(humaneval, "humaneval")
    if capability == "reasoning":
        return bbh_scores(model, template, share([r for r in rows if r["task"].startswith("bbh/")], per_capability))
    if capability == "knowledge":
        return mmlu_scores(model, template, share([r for r in rows if r["task"].startswith("mmlu/")], per_capability))
    return gold(stratified_sample(list(rows), per_capability, lambda r: ""), capability)
