"""The instruction-tuning template: one rendering for selection features and for fine-tuning.

A pool example (instruction, input, output) becomes a user turn and an assistant turn in the
model's chat template. Models without a chat template fall back to the Alpaca prompt format.
The prompt and the response are tokenized separately and concatenated, so the boundary between
prompt tokens (no loss) and response tokens (loss) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from nait_pipeline.lib.io.hashing import sha256_text

TEMPLATE_VERSION = "1"  # bump when the rendering below changes: it is part of the template hash
ALPACA_PROMPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{user}\n\n### Response:\n"


def user_message(instruction: str, input_text: str) -> str:
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    response_start: int  # index of the first response token; equals len(input_ids) when truncated away
    truncated: bool
    full_length: int  # token count before truncation


class ChatTemplate:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        source = tokenizer.chat_template if self.uses_chat_template else ALPACA_PROMPT
        self.template_hash = sha256_text(f"{TEMPLATE_VERSION}\x1f{source}\x1f{tokenizer.eos_token}")[:16]

    def render(self, instruction: str, input_text: str, output: str) -> tuple[str, str]:
        """Return ``(prompt_text, response_text)``; their concatenation is the full training text."""
        user = user_message(instruction, input_text)
        if not self.uses_chat_template:
            return ALPACA_PROMPT.format(user=user), output + (self.tokenizer.eos_token or "")
        messages = [{"role": "user", "content": user}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": output}], tokenize=False
        )
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the prompt as a prefix of the full conversation")
        return prompt, full[len(prompt):]

    def render_prompt(self, instruction: str, input_text: str) -> str:
        return self.render(instruction, input_text, "")[0]

    def tokenize(self, instruction: str, input_text: str, output: str, max_length: int) -> TokenizedExample:
        prompt, response = self.render(instruction, input_text, output)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not self.uses_chat_template and self.tokenizer.bos_token_id is not None:
            prompt_ids = [self.tokenizer.bos_token_id] + prompt_ids
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + response_ids
        return TokenizedExample(
            input_ids=ids[:max_length],
            response_start=min(len(prompt_ids), max_length),
            truncated=len(ids) > max_length,
            full_length=len(ids),
        )
