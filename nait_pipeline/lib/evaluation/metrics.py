"""Answer extraction and scoring for the per-capability evaluations (GSM8K, BBH, MMLU, code)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)
_CODE_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
CHOICES = "ABCD"


def normalize_number(text: str, first: bool = False) -> str | None:
    """The last (or first) number in ``text``, normalized: '1,234.50' -> '1234.5'; None if there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[0 if first else -1].replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value


def gsm8k_answer(generated: str) -> str | None:
    """The final number: after '####' if present, else after 'the answer is', else the last number."""
    if "####" in generated:
        return normalize_number(generated.split("####")[-1], first=True)
    match = _ANSWER_IS.search(generated)
    if match and normalize_number(match.group(1), first=True) is not None:
        return normalize_number(match.group(1), first=True)
    return normalize_number(generated)


def gsm8k_correct(generated: str, reference_final: str) -> bool:
    predicted = gsm8k_answer(generated)
    return predicted is not None and predicted == normalize_number(reference_final)


def _normalize_text(text: str) -> str:
    return text.strip().strip(".").strip().lower()


def bbh_answer(generated: str) -> str:
    """The text after the last 'the answer is' (up to the line end), else the first line."""
    matches = _ANSWER_IS.findall(generated)
    chosen = matches[-1] if matches else (generated.strip().splitlines() or [""])[0]
    return _normalize_text(chosen.split("\n")[0])


def bbh_correct(generated: str, target: str) -> bool:
    return bbh_answer(generated) == _normalize_text(target)


def mmlu_prediction(choice_logliks: Sequence[float]) -> str:
    """The letter whose answer has the highest log-likelihood (first one on ties)."""
    values = np.asarray(choice_logliks, dtype=np.float64)
    if values.shape != (len(CHOICES),) or not np.isfinite(values).all():
        raise ValueError(f"expected {len(CHOICES)} finite log-likelihoods, got {choice_logliks!r}")
    return CHOICES[int(np.argmax(values))]


def extract_code(generated: str) -> str:
    """The first fenced Python block, or the whole text when there is none."""
    match = _CODE_FENCE.search(generated)
    return (match.group(1) if match else generated).strip("\n")
