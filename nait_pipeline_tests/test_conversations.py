"""Conversation pools: validation and quarantine, truncation from the last turns, rendering with loss on
every assistant turn and only there, and the example pool through ingest, features, selection, fine-tuning
and a chat export that gives back the conversations as they were."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from nait_pipeline.lib.data.conversation import ConversationError, parse_conversation
from nait_pipeline.lib.data.ingest import ingest_pools
from nait_pipeline.lib.io.settings import PROJECT_ROOT
from nait_pipeline.lib.models.template import ChatTemplate, TemplateError

EXAMPLE_POOL = PROJECT_ROOT / "docs" / "examples" / "chat_pool.jsonl"
TURNS = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2+2?"},
         {"role": "assistant", "content": "4"}]


def example_rows() -> list[dict]:
    return [json.loads(line) for line in EXAMPLE_POOL.read_text().splitlines()]


@pytest.mark.parametrize("turns, field, problem", [
    ([{"role": "user", "content": "Hi"}], "messages", "no assistant turn"),
    ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}], "messages[1].role", "unknown role 'bot'"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}], "messages[1].content", "empty"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 3}], "messages[1].content",
     "not a string (int)"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
     "messages[1]", "a user turn after a user turn"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "messages[0]",
     "an assistant turn as the first turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}],
     "messages[1]", "a system turn must be the first turn"),
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "messages[1]", "a tool turn after a user"),
    ([], "messages", "no turns"),
    ("not json", "messages", "not a list of turns"),
    (["hello"], "messages[0]", "a turn must be an object"),
])
def test_bad_conversations_are_refused_naming_the_turn_and_field(turns, field, problem):
    with pytest.raises(ConversationError) as error:
        parse_conversation({"messages": turns}, max_chars=1000)
    assert error.value.field == field and problem in str(error.value)


def test_sharegpt_turns_map_to_roles_and_a_single_exchange_is_its_triple():
    conversation = parse_conversation({"conversations": [{"from": "human", "value": "Hi"},
                                                         {"from": "gpt", "value": "Hello."}]}, 1000)
    assert conversation.turns == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."})
    assert conversation.is_single_exchange and conversation.flag is None
    with pytest.raises(ConversationError, match=r"conversations\[1\].from: unknown role 'bard'"):
        parse_conversation({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bard", "value": "Yo"}]}, 1000)


def test_turns_after_the_last_answer_and_over_the_limit_are_dropped_with_a_flag():
    conversation = parse_conversation({"messages": TURNS + [{"role": "user", "content": "Thanks"}]}, 1000)
    assert conversation.turns == tuple(TURNS) and "dropped 1 turn(s) after the last assistant turn" in conversation.flag
    assert conversation.text_view() == {"instruction": "Hi\n\nWhat is 2+2?", "input": "", "output": "Hello.\n\n4"}
    long = [*TURNS[:3], {"role": "user", "content": "x" * 20}, {"role": "assistant", "content": "y" * 20}]
    cut = parse_conversation({"messages": long}, max_chars=15)  # the joined user text would be 24 characters
    assert cut.turns == tuple(TURNS[:3]) and "dropped the last 2 turn(s)" in cut.flag
    with pytest.raises(ConversationError, match="even cut to its first assistant turn"):
        parse_conversation({"messages": long}, max_chars=5)


def test_the_example_pool_is_ingested_with_every_bad_row_quarantined_for_its_reason():
    result = ingest_pools([EXAMPLE_POOL])
    reasons = {r["example_id"]: r["reason"] for r in result.quarantine_rows}
    assert reasons == {
        "bad-no-answer": "messages: no assistant turn",
        "bad-role": "messages[1].role: unknown role 'bot' (expected one of ['system', 'user', 'assistant', 'tool'])",
        "bad-empty": "messages[1].content: empty",
        "bad-not-text": "messages[1].content: not a string (int)",
        "bad-order": "messages[1]: a user turn after a user turn: user and assistant turns must alternate",
        "bad-system": "messages[1]: a system turn must be the first turn",
    }
    kept = {r["example_id"]: r for r in result.pool_rows}
    assert len(kept) == 10 and all(r["status"] == "kept" for r in kept.values())
    # A single exchange is stored as its triple: same hash as the triple itself.
    assert kept["chat-03"]["messages"] is None and kept["chat-03"]["instruction"] == "Translate 'good morning' into French."
    assert sum(r["messages"] is not None for r in kept.values()) == 9
    assert kept["chat-07"]["ingest_flag"] == "dropped 1 turn(s) after the last assistant turn"
    assert json.loads(kept["chat-04"]["messages"])[1] == {"role": "assistant", "content": "Joyful."}


def test_the_same_prompt_twice_is_a_duplicate_and_a_single_exchange_equals_its_triple(tmp_path):
    pools = tmp_path / "pools"
    pools.mkdir()
    rows = [{"id": "t", "instruction": "Hi", "output": "Hello."},
            {"id": "c", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
            {"id": "m1", "messages": TURNS}, {"id": "m2", "messages": [*TURNS[:4], {"role": "assistant", "content": "5"}]}]
    (pools / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_id = {r["example_id"]: r for r in ingest_pools([pools / "mixed.jsonl"]).pool_rows}
    assert by_id["c"]["duplicate_of"] == "t" and by_id["m2"]["duplicate_of"] == "m1"
    assert by_id["m1"]["content_hash"] != by_id["m2"]["content_hash"]


@pytest.fixture(scope="module")
def template(model_dir) -> ChatTemplate:
    from nait_pipeline.lib.models.model_io import load_tokenizer

    return ChatTemplate(load_tokenizer(model_dir))


def test_loss_falls_on_every_assistant_turn_and_nowhere_else(template):
    tokenizer = template.tokenizer
    example = template.tokenize_row({"messages": json.dumps(TURNS)}, 512)
    assert [tokenizer.decode(example.input_ids[s:e]) for s, e in example.spans()] == [
        "Hello.<|im_end|>\n", "4<|im_end|>\n"]
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(TURNS, tokenize=False)
    assert example.response_start == example.spans()[0][0] and not example.truncated
    # A triple renders exactly as its single exchange.
    triple = template.tokenize_row({"instruction": "Hi", "input": "", "output": "Hello.", "messages": None}, 512)
    exchange = template.tokenize_messages(TURNS[1:3], 512)
    assert triple == exchange


def test_a_conversation_over_max_length_loses_its_last_exchanges_first(template):
    full = template.tokenize_row({"messages": json.dumps(TURNS)}, 512)
    first_exchange_end = full.spans()[0][1]
    cut = template.tokenize_row({"messages": json.dumps(TURNS)}, first_exchange_end + 3)
    assert cut.truncated and cut.full_length == len(full.input_ids)
    assert cut.input_ids == full.input_ids[:first_exchange_end] and cut.spans() == full.spans()[:1]
    tiny = template.tokenize_row({"messages": json.dumps(TURNS)}, first_exchange_end - 2)  # the first answer is cut
    assert len(tiny.input_ids) == first_exchange_end - 2 and tiny.spans() == ((full.spans()[0][0], first_exchange_end - 2),)


def test_without_a_chat_template_conversations_fall_back_to_alpaca_turns(model_dir):
    from nait_pipeline.lib.models.model_io import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    tokenizer.chat_template = None
    template = ChatTemplate(tokenizer)
    example = template.tokenize_row({"messages": json.dumps(TURNS)}, 512)
    eos = tokenizer.eos_token
    assert [tokenizer.decode(example.input_ids[s:e]) for s, e in example.spans()] == [f"Hello.{eos}", f"4{eos}"]
    assert tokenizer.decode(example.input_ids[1:]).startswith("Be terse.\n\n### Instruction:\nHi")
    prompt, response = template.render("Hi", "", "Hello.")
    assert prompt.startswith("Below is an instruction") and response == f"Hello.{eos}"


def test_a_template_that_does_not_render_prefixes_as_prefixes_is_refused():
    class Reordering:  # a template that puts the newest turn first
        chat_template, eos_token, bos_token_id = "reorder", "</s>", None

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            return "".join(f"[{m['role']}]{m['content']}" for m in reversed(messages))

    with pytest.raises(TemplateError, match="turns 0..1"):
        ChatTemplate(Reordering()).segments(TURNS[1:3])


def test_the_training_loss_is_the_hf_loss_over_assistant_tokens(template, model_dir):
    import torch

    from nait_pipeline.lib.models.model_io import load_causal_lm
    from nait_pipeline.lib.models.train import IGNORE_INDEX, collate, response_loss

    example = template.tokenize_row({"messages": json.dumps(TURNS)}, 512)
    input_ids, mask, labels = collate([example], template.tokenizer.pad_token_id or 0)
    assert (labels != IGNORE_INDEX).sum() == example.n_loss_tokens
    model = load_causal_lm(model_dir, "float32", "cpu")
    with torch.no_grad():
        ours = response_loss(model, input_ids, mask, labels)
        reference = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)


def test_the_example_pool_goes_through_features_selection_fine_tuning_and_a_chat_export(model_dir, tmp_path):
    from nait_pipeline.defs.assets.features import pool_activations
    from nait_pipeline.defs.assets.methods import score_assets, subset_assets
    from nait_pipeline.defs.assets.model import base_model
    from nait_pipeline.defs.assets.pool import it_pool, pool_contamination
    from nait_pipeline.defs.partitions import POOL_SHARDS_NAME
    from nait_pipeline.defs.resources import LakeResource
    from nait_pipeline.lib.features.feature_store import read_features
    from nait_pipeline.lib.methods.audit import export_subset, subset_rows
    from nait_pipeline.lib.models.model_io import load_tokenizer
    from nait_pipeline.lib.models.train import TrainConfig, fine_tune

    data = tmp_path / "data"
    (data / "pools").mkdir(parents=True)
    (data / "pools" / "chat_pool.jsonl").write_bytes(EXAMPLE_POOL.read_bytes())
    resource = LakeResource(data_dir=str(data), store_dir=str(tmp_path / "store"), model=str(model_dir))
    assets = [base_model, it_pool, pool_contamination, pool_activations, *score_assets, *subset_assets]
    with dg.instance_for_test() as instance:
        run = dg.materialize(assets, selection=["base_model", "it_pool", "pool_contamination"], instance=instance,
                             resources={"pipeline": resource},
                             run_config={"ops": {"it_pool": {"config": {"settle_seconds": 0.0}}}})
        metadata = run.asset_materializations_for_node("it_pool")[0].metadata
        assert (metadata["row_count"].value, metadata["quarantined"].value, metadata["conversations"].value,
                metadata["flagged"].value) == (10, 6, 9, 1)
        [shard] = instance.get_dynamic_partitions(POOL_SHARDS_NAME)
        assert dg.materialize(assets, selection=["pool_activations"], partition_key=shard, instance=instance,
                              resources={"pipeline": resource}).success
        layout = resource.layout
        features = read_features([layout.pool_activations(shard)], vectors=(),
                                 scalars=("n_tokens", "n_response_tokens"))
        by_id = dict(zip(features.ids, features.scalars["n_response_tokens"]))
        tokens = dict(zip(features.ids, features.scalars["n_tokens"]))
        # Every assistant turn counts: chat-01's two answers, chat-06's two around the tool turn.
        template = ChatTemplate(load_tokenizer(model_dir))
        assert by_id["chat-06"] == template.tokenize_row(
            {"messages": json.dumps(example_rows()[5]["messages"])}, 4096).n_loss_tokens
        assert tokens["chat-02"] > tokens["chat-03"]
        selected = dg.materialize(assets, selection=["perplexity_scores", "perplexity_top_subsets", "full_subsets"],
                                  instance=instance, resources={"pipeline": resource})
        versions = {name: selected.asset_materializations_for_node(f"{name}_subsets")[0]
                    .metadata["subset_versions"].value["all"] for name in ("perplexity_top", "full")}

    # The full subset exported as chat gives back every kept conversation exactly as the file had it.
    out = tmp_path / "chat.jsonl"
    assert export_subset(layout, versions["full"], "chat", out) == 10
    exported = {r["id"]: r["messages"] for r in map(json.loads, out.read_text().splitlines())}
    for row in example_rows():
        if row["id"] not in exported:
            continue
        given = row.get("messages") or [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]),
                                         "content": t["value"]} for t in row["conversations"]]
        expected = given[:-1] if row["id"] == "chat-07" else given  # its unanswered "Thanks!" was dropped, flagged
        assert exported[row["id"]] == expected, row["id"]
    # Ingesting the Alpaca export again gives the same rows (conversations travel as their messages).
    again = tmp_path / "pools"
    again.mkdir()
    export_subset(layout, versions["full"], "alpaca", again / "reexport.jsonl")
    reingested = {r["example_id"]: r["content_hash"] for r in ingest_pools([again / "reexport.jsonl"]).pool_rows}
    assert reingested == dict(zip(*pq.read_table(layout.pool_examples, columns=["example_id", "content_hash"],
                                                 filters=[("status", "=", "kept")]).to_pydict().values()))

    # Fine-tuning on the perplexity subset learns from every assistant turn of its conversations.
    rows = subset_rows(layout, versions["perplexity_top"]).to_pylist()
    result = fine_tune(Path(model_dir), rows, TrainConfig(epochs=1, batch_size=2, max_length=256),
                       tmp_path / "tuned", device="cpu")
    assert result.steps >= 1 and result.tokens > 0 and all(loss == loss for loss in result.losses)
