"""The instruction-tuning template: one rendering for selection features and for fine-tuning.

A triple (instruction, input, output) becomes a user turn and an assistant turn in the model's chat
template; a conversation (a pool row's ``messages``) is rendered turn by turn. Models without a chat
template fall back to the Alpaca prompt format. The text is rendered as segments that are tokenized
separately and concatenated, so the boundary between tokens without loss (system, user and tool turns,
role headers) and loss tokens (every assistant turn) is exact. A triple's prompt is one segment and its
response another, whatever the template.

Truncation to ``max_length`` tokens drops a conversation's last exchanges first (never its first
assistant turn); what is still too long, or a triple, is cut at ``max_length``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from nait_pipeline.lib.io.hashing import sha256_text

TEMPLATE_VERSION = "1"  # bump when the rendering below changes: it is part of the template hash
ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_PROMPT = ALPACA_PREAMBLE + "\n\n### Instruction:\n{user}\n\n### Response:\n"
ALPACA_HEADERS = {"user": "### Instruction:\n", "tool": "### Tool:\n"}


def user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def row_messages(row: dict) -> list[dict]:
    """The turns a pool row renders as: its conversation, or its triple as one user and one assistant turn."""
    if row.get("messages") is not None:
        return json.loads(row["messages"])
    return [{"role": "user", "content": user_message(row["instruction"], row["input"])},
            {"role": "assistant", "content": row["output"]}]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    response_start: int  # index of the first loss token; equals len(input_ids) when truncated away
    truncated: bool
    full_length: int  # token count before truncation
    # [start, end) token spans carrying loss (the assistant turns); None: from response_start to the end
    loss_spans: tuple[tuple[int, int], ...] | None = None

    def spans(self) -> tuple[tuple[int, int], ...]:
        if self.loss_spans is not None:
            return self.loss_spans
        return ((self.response_start, len(self.input_ids)),) if len(self.input_ids) > self.response_start else ()

    @property
    def n_loss_tokens(self) -> int:
        return sum(end - start for start, end in self.spans())

    @property
    def has_loss(self) -> bool:
        return self.n_loss_tokens > 0

    def window(self, cut: int) -> TokenizedExample:
        """The example without its first ``cut`` tokens (a left-truncated window), spans moved with it."""
        spans = tuple((max(0, s - cut), e - cut) for s, e in self.spans() if e > cut)
        return TokenizedExample(input_ids=self.input_ids[cut:], response_start=spans[0][0] if spans else
                                len(self.input_ids) - cut, truncated=True, full_length=self.full_length,
                                loss_spans=spans)


class TemplateError(ValueError):
    """A chat template that cannot render a conversation turn by turn."""


class ChatTemplate:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        source = tokenizer.chat_template if self.uses_chat_template else ALPACA_PROMPT
        self.template_hash = sha256_text(f"{TEMPLATE_VERSION}\x1f{source}\x1f{tokenizer.eos_token}")[:16]

    def render(self, instruction: str, input_text: str, output: str) -> tuple[str, str]:
        """Return ``(prompt_text, response_text)``; their concatenation is the full training text."""
        return self.render_row({"instruction": instruction, "input": input_text, "output": output})

    def render_row(self, row: dict) -> tuple[str, str]:
        """A pool row as ``(prompt_text, response_text)``: everything before its first assistant turn, and the
        rest (for a conversation the later turns too)."""
        segments = self.segments(row_messages(row))
        first = next(i for i, (_, loss) in enumerate(segments) if loss)
        return "".join(t for t, _ in segments[:first]), "".join(t for t, _ in segments[first:])

    def render_prompt(self, instruction: str, input_text: str) -> str:
        return self.render(instruction, input_text, "")[0]

    def segments(self, messages: Sequence[dict]) -> list[tuple[str, bool]]:
        """The rendered conversation as ``(text, carries_loss)`` pieces, consecutive no-loss pieces merged; each
        assistant turn's piece ends with the template's end of turn."""
        pieces = self._chat_pieces(messages) if self.uses_chat_template else self._alpaca_pieces(messages)
        merged: list[tuple[str, bool]] = []
        for text, loss in pieces:
            if merged and not loss and not merged[-1][1]:
                merged[-1] = (merged[-1][0] + text, False)
            else:
                merged.append((text, loss))
        return merged

    def _chat_pieces(self, messages: Sequence[dict]) -> list[tuple[str, bool]]:
        apply = self.tokenizer.apply_chat_template
        pieces, rendered = [], ""
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                head = apply(list(messages[:index]), tokenize=False, add_generation_prompt=True)
                pieces.append((self._after(rendered, head, index), False))
                rendered = head
            full = apply(list(messages[: index + 1]), tokenize=False)
            pieces.append((self._after(rendered, full, index), message["role"] == "assistant"))
            rendered = full
        return pieces

    @staticmethod
    def _after(rendered: str, longer: str, index: int) -> str:
        if not longer.startswith(rendered):
            raise TemplateError(f"the chat template does not render turns 0..{index} as an extension of the turns "
                                "before them, so the assistant tokens cannot be told apart: use a template that "
                                "renders a conversation prefix as a prefix")
        return longer[len(rendered):]

    def _alpaca_pieces(self, messages: Sequence[dict]) -> list[tuple[str, bool]]:
        turns = list(messages)
        preamble = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else ALPACA_PREAMBLE
        pieces = [(preamble + "\n\n", False)]
        for turn in turns:
            if turn["role"] == "assistant":
                pieces.append(("### Response:\n", False))
                pieces.append((turn["content"] + (self.tokenizer.eos_token or ""), True))
                pieces.append(("\n\n", False))
            else:
                pieces.append((ALPACA_HEADERS[turn["role"]] + turn["content"] + "\n\n", False))
        if pieces[-1] == ("\n\n", False):  # a triple renders exactly as ALPACA_PROMPT + output + eos
            pieces.pop()
        return pieces

    def tokenize(self, instruction: str, input_text: str, output: str, max_length: int) -> TokenizedExample:
        return self.tokenize_row({"instruction": instruction, "input": input_text, "output": output}, max_length)

    def tokenize_row(self, row: dict, max_length: int) -> TokenizedExample:
        """A pool row (a triple or a conversation) as token ids with its loss spans, fitted to ``max_length``."""
        return self.tokenize_messages(row_messages(row), max_length)

    def tokenize_messages(self, messages: Sequence[dict], max_length: int) -> TokenizedExample:
        pieces = [(self.tokenizer(text, add_special_tokens=False)["input_ids"], loss)
                  for text, loss in self.segments(messages)]
        if not self.uses_chat_template and self.tokenizer.bos_token_id is not None:
            pieces[0] = ([self.tokenizer.bos_token_id] + pieces[0][0], False)
        ids, spans = [], []
        for tokens, loss in pieces:
            if loss:
                spans.append((len(ids), len(ids) + len(tokens)))
            ids += tokens
        full_length = len(ids)
        # Keep whole exchanges (each ends with its answer) while they fit; else the first, cut at max_length.
        fitting = [end for _, end in spans if end <= max_length]
        end = fitting[-1] if fitting else min(full_length, max_length)
        kept = tuple((s, min(e, end)) for s, e in spans if s < end)
        return TokenizedExample(
            input_ids=ids[:end],
            response_start=kept[0][0] if kept else end,
            truncated=end < full_length,
            full_length=full_length,
            loss_spans=kept,
        )
