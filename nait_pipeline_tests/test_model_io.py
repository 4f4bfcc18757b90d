"""The real embedded model: GGUF conversion, description, template rendering, a forward pass."""

from __future__ import annotations

import torch

from nait_pipeline.lib.models import model_io
from nait_pipeline.lib.models.template import ChatTemplate


def test_conversion_produces_a_loadable_30_layer_model(model_dir):
    assert (model_dir / "model.safetensors").is_file()
    info = model_io.describe_model(model_dir)
    assert (info.num_layers, info.hidden_size, info.architecture) == (30, 576, "LlamaForCausalLM")
    assert info.has_chat_template and len(info.template_hash) == 16
    assert info.model_id.startswith("SmolLM2-135M-Instruct@")
    assert model_io.describe_model(model_dir).model_id == info.model_id  # stable


def test_tokenizer_closes_turns_with_im_end(model_dir):
    tokenizer = model_io.load_tokenizer(model_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None


def test_template_splits_prompt_and_response_exactly(model_dir):
    template = ChatTemplate(model_io.load_tokenizer(model_dir))
    prompt, response = template.render("Translate", "bonjour", "hello")
    assert prompt.endswith("<|im_start|>assistant\n") and "Translate\n\nbonjour" in prompt
    assert response == "hello<|im_end|>\n"
    tokens = template.tokenize("Translate", "bonjour", "hello", max_length=512)
    tokenizer = template.tokenizer
    assert tokenizer.decode(tokens.input_ids[tokens.response_start:]) == response
    assert not tokens.truncated
    short = template.tokenize("Translate", "bonjour", "hello " * 50, max_length=tokens.response_start + 3)
    assert short.truncated and len(short.input_ids) == tokens.response_start + 3
    assert short.full_length > len(short.input_ids)


def test_forward_pass_predicts_sensible_text(model_dir):
    model = model_io.load_causal_lm(model_dir)
    tokenizer = model_io.load_tokenizer(model_dir)
    template = ChatTemplate(tokenizer)
    prompt = template.render_prompt("What is the capital of France?", "")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
