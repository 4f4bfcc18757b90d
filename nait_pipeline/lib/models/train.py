"""Fine-tune a causal LM on a subset: the same chat/IT template as selection, loss on response tokens only.

LoRA (peft) or full fine-tuning; seeds, epochs, learning rate, batch size and max length are
explicit and recorded. CPU by default, the GPU when one is present. The result is written to a
temporary folder and renamed into place only after training succeeded, so a failed run never
leaves a half-written model behind. LoRA adapters are merged into the weights before saving, so
evaluation loads a plain Hugging Face model directory.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nait_pipeline.lib.io.lake import atomic_dir
from nait_pipeline.lib.models.template import ChatTemplate

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "lora"  # lora | full
    epochs: int = 1
    learning_rate: float = 2e-4  # LoRA; full fine-tuning usually wants ~2e-5
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0
    warmup_ratio: float = 0.03
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def as_dict(self) -> dict:
        """The config as lineage records it (JSON types: lists, not tuples), so a config read back from
        a finetune record compares equal to the one that wrote it."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class TrainResult:
    path: Path
    steps: int
    losses: list[float]
    tokens: int
    seconds: float


def length_grouped_batches(examples: list, batch_size: int, seed: int, epoch: int) -> list[list]:
    """Seeded shuffle, then length grouping: rows are sorted by length inside windows of 32 batches,
    cut into batches, and the batches shuffled again. Padding, not learning, is what a random batch of
    mixed lengths mostly computes on a CPU; the windows keep the order random at the scale of an epoch."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        grouped = sorted(order[start : start + window], key=lambda i: len(examples[i].input_ids))
        batches += [grouped[s : s + batch_size] for s in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return [[examples[i] for i in batch] for batch in batches]


def collate(batch, pad_id: int):
    import torch

    width = max(len(t.input_ids) for t in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids = torch.tensor(tokens.input_ids)
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
        for start, end in tokens.spans():
            labels[row, start:end] = ids[start:end]
    return input_ids, mask, labels


def response_loss(model, input_ids, mask, labels):
    """Mean cross-entropy over response tokens, with the LM head applied only where a label exists
    (the head is a fifth of a small model's FLOPs; prompts and padding need none of it)."""
    import torch

    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def training_step(model, parameters, optimizer, scheduler, input_ids, mask, labels, where: str,
                  autocast=None) -> float:
    """One optimizer step on the response loss (gradients clipped at norm 1); a non-finite loss stops
    training, naming ``where`` it happened. Returns the loss."""
    import contextlib

    import torch

    with autocast or contextlib.nullcontext():
        loss = response_loss(model, input_ids, mask, labels)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} {where}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_epochs(model, parameters, optimizer, scheduler, examples: Sequence, *, batch_size: int, seed: int, pad_id: int,
                 epochs: Sequence[int], where: str, device: str = "cpu", autocast=None,
                 before_epoch: Callable[[int], None] | None = None, before_step: Callable[[int, int], None] | None = None,
                 after_step: Callable[[int, int, list, object, float], None] | None = None,
                 after_epoch: Callable[[int], None] | None = None) -> None:
    """The one training loop (fine-tuning, LP's selector, LESS's warmup): for each epoch (1-based) seeded,
    length-grouped batches (``length_grouped_batches(seed, epoch - 1)``) and one ``training_step`` each.
    What differs between its users are the hooks: ``before_epoch(epoch)``, ``before_step(epoch, step)``,
    ``after_step(epoch, step, batch, mask, loss)`` and ``after_epoch(epoch)`` (checkpoints, perplexity
    passes, optimizer state export). ``where`` names the run in a non-finite loss's error."""
    for epoch in epochs:
        model.train()
        if before_epoch is not None:
            before_epoch(epoch)
        for step, batch in enumerate(length_grouped_batches(list(examples), batch_size, seed, epoch - 1), 1):
            if before_step is not None:
                before_step(epoch, step)
            input_ids, mask, labels = (t.to(device) for t in collate(batch, pad_id))
            loss = training_step(model, parameters, optimizer, scheduler, input_ids, mask, labels,
                                 f"in {where} epoch {epoch}, step {step}", autocast)
            if after_step is not None:
                after_step(epoch, step, batch, mask, loss)
        if after_epoch is not None:
            after_epoch(epoch)


def fine_tune(model_dir: Path, rows: Sequence[dict], config: TrainConfig, destination: Path,
              progress: Callable[[int, int, float], None] | None = None, device: str = "cpu") -> TrainResult:
    """Train on ``rows`` (pool rows: triples or conversations, loss on every assistant turn) and save the model
    at ``destination``."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from nait_pipeline.lib.models.model_io import load_causal_lm, load_tokenizer

    if not rows:
        raise ValueError("no training rows: the subset is empty")
    if config.mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {config.mode!r}")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(model_dir)
    template = ChatTemplate(tokenizer)
    examples = [template.tokenize_row(r, config.max_length) for r in rows]
    kept = [e for e in examples if e.has_loss]
    dropped = len(examples) - len(kept)  # truncation left no response token to learn from
    examples = kept
    if not examples:
        raise ValueError(f"every row lost its response to truncation at max_length={config.max_length}")
    model = load_causal_lm(model_dir, "float32", device)
    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 lora_dropout=config.lora_dropout,
                                                 target_modules=list(config.lora_targets), task_type="CAUSAL_LM"))
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    # floor, not ceil: on a run of a few steps a whole warmup step would mean a first update at lr 0.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses: list[float] = []
    tokens = 0
    started = time.perf_counter()

    def after_step(epoch: int, step: int, batch: list, mask, loss: float) -> None:
        nonlocal tokens
        losses.append(loss)
        tokens += int(mask.sum())
        if progress is not None:
            progress(len(losses), total, loss)

    train_epochs(model, parameters, optimizer, scheduler, examples, batch_size=config.batch_size, seed=config.seed,
                 pad_id=pad_id, epochs=range(1, config.epochs + 1), where="fine-tuning", device=device,
                 autocast=torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")),
                 after_step=after_step)
    seconds = time.perf_counter() - started
    if config.mode == "lora":
        model = model.merge_and_unload()
    model.eval()
    with atomic_dir(destination) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "nait_training.json").write_text(json.dumps(
            {"config": config.as_dict(), "base_model": str(model_dir), "examples": len(examples),
             "dropped_no_response_tokens": dropped, "steps": len(losses),
             "losses": losses, "tokens": tokens, "seconds": seconds}, indent=2))
    return TrainResult(path=destination, steps=len(losses), losses=losses, tokens=tokens, seconds=seconds)
