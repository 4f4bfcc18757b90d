"""Conversation rows: parse, validate, cut to the row limit, and give the text view the text stages read.

A pool row is either an instruction triple (instruction, input, output) or a conversation: a
``messages`` list of ``{role, content}`` turns (roles system, user, assistant, tool) or ShareGPT's
``conversations`` list of ``{from, value}`` turns (human, gpt, system, tool). A conversation is valid
when: every turn has a known role and non-empty string content; a system turn, if any, is first; the
first other turn is a user turn; user and assistant turns alternate (tool turns answer an assistant
turn and are followed by a tool or assistant turn); there is an assistant turn. Turns after the last
assistant turn teach nothing (no loss falls on them) and are dropped with a flag; a conversation over
the row limit (the triple's, on its text view) loses its last exchanges, never its first assistant turn,
with a flag.

A conversation that is one user turn and one assistant turn is the triple (user, "", assistant): it is
stored as one, so it renders, hashes and de-duplicates exactly as the same row given as a triple. Any
other conversation keeps its turns (canonical JSON in the pool's ``messages`` column) and gets a text
view for the stages that read text only (length, decontamination, near-duplicates, previews): its user
turns joined as the instruction, its assistant turns joined as the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool"}
CONVERSATION_FIELDS = ("messages", "conversations")
TURN_SEPARATOR = "\n\n"


class RowFieldError(ValueError):
    """A pool row that cannot be used; ``field`` names where (``output``, ``messages[3].role``)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class ConversationError(RowFieldError):
    """A conversation row that cannot be used."""


@dataclass(frozen=True)
class Conversation:
    turns: tuple[dict, ...]  # role, content and any other keys of the turn, as given
    flag: str | None = None  # why turns were dropped, if any were

    @property
    def is_single_exchange(self) -> bool:
        """One user turn, one assistant turn, nothing else: the same row as a triple."""
        return [t["role"] for t in self.turns] == ["user", "assistant"] and all(len(t) == 2 for t in self.turns)

    def text_view(self) -> dict[str, str]:
        """The instruction / input / output the text stages read."""
        def joined(role: str) -> str:
            return TURN_SEPARATOR.join(t["content"] for t in self.turns if t["role"] == role)
        return {"instruction": joined("user"), "input": "", "output": joined("assistant")}

    def to_json(self) -> str:
        return messages_json(self.turns)


def messages_json(turns) -> str:
    """The canonical text of a conversation: what the pool stores and its content hash covers."""
    return json.dumps(list(turns), ensure_ascii=False, separators=(",", ":"))


def conversation_field(record: dict) -> str | None:
    """The conversation field a record uses (``messages`` first), or None for a triple."""
    return next((name for name in CONVERSATION_FIELDS if record.get(name) is not None), None)


def parse_conversation(record: dict, max_chars: int) -> Conversation:
    """The validated conversation of ``record``; :class:`ConversationError` names the first problem."""
    name = conversation_field(record)
    if name is None:
        raise ConversationError("messages", "missing")
    turns = _turns(record[name], name)
    _check_order(turns, name)
    last_assistant = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    flags = []
    if last_assistant + 1 < len(turns):
        flags.append(f"dropped {len(turns) - last_assistant - 1} turn(s) after the last assistant turn")
        turns = turns[: last_assistant + 1]
    turns, cut_flag = _fit(turns, max_chars, name)
    if cut_flag:
        flags.append(cut_flag)
    return Conversation(tuple(turns), "; ".join(flags) or None)


def _turns(value, name: str) -> list[dict]:
    if isinstance(value, str):  # a conversation stored as JSON text (a CSV-born Parquet column)
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConversationError(name, f"not a list of turns (invalid JSON: {exc.msg})") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConversationError(name, "not a list of turns" if not isinstance(value, (list, tuple)) else "no turns")
    role_key, content_key = ("from", "value") if name == "conversations" else ("role", "content")
    turns = []
    for index, turn in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(turn, dict):
            raise ConversationError(where, f"a turn must be an object, got {type(turn).__name__}")
        role = turn.get(role_key)
        mapped = SHAREGPT_ROLES.get(role) if name == "conversations" else (role if role in ROLES else None)
        if mapped is None:
            known = sorted(SHAREGPT_ROLES) if name == "conversations" else list(ROLES)
            raise ConversationError(f"{where}.{role_key}", f"unknown role {role!r} (expected one of {known})")
        content = turn.get(content_key)
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        if not isinstance(content, str):
            raise ConversationError(f"{where}.{content_key}", "missing" if content is None else
                                    f"not a string ({type(content).__name__})")
        if not content.strip():
            raise ConversationError(f"{where}.{content_key}", "empty")
        others = {k: v for k, v in turn.items() if k not in (role_key, content_key) and v is not None}
        turns.append({"role": mapped, "content": content, **others})
    return turns


# The role a turn may follow (None: the conversation's first turn after any system turn).
_MAY_FOLLOW = {"user": (None, "assistant"), "assistant": ("user", "tool"), "tool": ("assistant", "tool")}


def _check_order(turns: list[dict], name: str) -> None:
    previous = None
    for index, turn in enumerate(turns):
        role, where = turn["role"], f"{name}[{index}]"
        if role == "system":
            if index:
                raise ConversationError(where, "a system turn must be the first turn")
            continue
        if previous not in _MAY_FOLLOW[role]:
            after = f"after {_article(previous)} {previous} turn" if previous else "as the first turn"
            raise ConversationError(where, f"{_article(role)} {role} turn {after}: user and assistant turns must "
                                           "alternate")
        previous = role
    if not any(t["role"] == "assistant" for t in turns):
        raise ConversationError(name, "no assistant turn")


def _article(word: str) -> str:
    return "an" if word == "assistant" else "a"


def _fit(turns: list[dict], max_chars: int, name: str) -> tuple[list[dict], str | None]:
    """Drop the last exchanges until the conversation fits the row limit; the first assistant turn always
    stays. The limit is the triple's, applied to the text view: the user turns joined, the assistant turns
    joined and the system turn each hold at most ``max_chars`` characters."""
    def longest(end: int) -> int:
        kept = Conversation(tuple(turns[:end]))
        system = sum(len(t["content"]) for t in turns[:end] if t["role"] == "system")
        return max(system, *(len(text) for text in kept.text_view().values()))

    if longest(len(turns)) <= max_chars:
        return turns, None
    ends = [i + 1 for i, t in enumerate(turns) if t["role"] == "assistant"]
    fitting = [end for end in ends if longest(end) <= max_chars]
    if not fitting:
        raise ConversationError(name, f"longer than {max_chars} characters even cut to its first assistant turn "
                                      f"({longest(ends[0])})")
    end = fitting[-1]
    return turns[:end], f"dropped the last {len(turns) - end} turn(s): longer than {max_chars} characters"


def example_record(row: dict) -> dict:
    """A pool row as a training file holds it: the conversation's turns, or the triple."""
    if row.get("messages") is not None:
        return {"messages": json.loads(row["messages"])}
    return {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}
