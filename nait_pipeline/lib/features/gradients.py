"""The gradient feature kind (LESS, methods.md sections 2 and 11): a LoRA warmup, then per-example
LoRA gradients of the response loss at each warmup checkpoint, projected and normalised.

- Warmup (:func:`warmup`): LoRA (peft) on a seeded share of the pool, AdamW, linear decay with warmup,
  weight decay 0. After each epoch the adapter weights, Adam's moments and the epoch's mean learning
  rate are saved (``checkpoint-<e>/state.pt``); the checkpoints' learning rates weight LESS's sum.
  A killed warmup resumes from its newest finished epoch.
- Per-example gradients (:func:`per_example_gradients`): one forward and one backward per batch; each
  LoRA matrix's per-example gradient is the sum over its tokens of outer products of the layer's input
  and output gradient, captured by hooks (a Linear layer's weight gradient separates by example because
  examples do not interact in a causal LM with right padding). Loss per example: mean cross-entropy
  over its response tokens; the batch loss is the sum over examples, so each gradient is unscaled.
  Dropout is off (eval mode), so a gradient does not depend on the batch it was computed in.
  :func:`loop_gradients` is the batch-1 loop the batched path is checked and benchmarked against.
- Features (:func:`gradient_features`): pool rows are Adam-preconditioned with the checkpoint's moments,
  ``m' = 0.9 m + 0.1 g, v' = 0.999 v + 0.001 g^2, m' / sqrt(v' + 1e-8)``; target rows keep the plain
  gradient; both are cast to float16 (as the official code does before projecting), projected by a
  seeded Rademacher matrix and L2-normalised.

A row whose prompt alone fills ``max_length`` keeps the last ``max_length`` tokens (prompt end and
response), so long few-shot or reading prompts still have a gradient. A pool row with an empty response
has none: it is stored as a zero vector flagged ``zero_gradient`` (never selected, counted). A target row
without one, or any non-finite value, is an error naming the ids.
"""

from __future__ import annotations

import functools

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.features.featurize import plan_batches
from nait_pipeline.lib.features.projection import RademacherProjector
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import atomic_dir, read_metadata, read_table, write_parquet
from nait_pipeline.lib.models.template import ChatTemplate, TokenizedExample
from nait_pipeline.lib.models.train import IGNORE_INDEX, collate, train_epochs

GRADIENT_VERSION = "1"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8  # inside the square root, as the official code has it
PROJECT_ROWS = 64  # rows projected per call


class GradientInputError(ValueError):
    """Rows whose gradient cannot be a feature (no response token, non-finite), or mismatched stores."""


@dataclass(frozen=True)
class WarmupConfig:
    share: float = 0.05
    """Seeded share of the pool the warmup trains on (official: 5 %)."""
    min_rows: int = 16
    """At least this many rows (a small pool's 5 % is a handful)."""
    epochs: int = 4
    """One checkpoint per epoch (official: 4)."""
    learning_rate: float = 2e-5
    batch_size: int = 8
    """Rows per optimizer step (official: 128 on 4 GPUs; a 5 % share of a small pool would get one step)."""
    max_length: int = 512
    warmup_ratio: float = 0.03
    lora_r: int = 8
    """Official: 128. The rank sets the gradient width (r x (in + out) per matrix): 0.9 M values at 8 on
    the embedded model, projected on a 2-core CPU in milliseconds per row; 128 would be 15 M."""
    lora_alpha: int = 32
    """Scaling alpha / r = 4, as the official 512 / 128."""
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    seed: int = 0

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class Checkpoint:
    epoch: int
    mean_lr: float
    path: Path


def _lora_model(model, config: WarmupConfig):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                            lora_dropout=config.lora_dropout,
                                            target_modules=list(config.lora_targets), task_type="CAUSAL_LM"))


def lora_parameters(model) -> list[tuple[str, object]]:
    """The trainable (LoRA) parameters in a fixed order: the order of every flattened gradient."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def warmup(model_dir: Path, rows: Sequence[dict], config: WarmupConfig, run_dir: Path, identity: dict,
           progress: Callable[[int, int], None] | None = None, device: str = "cpu") -> list[Checkpoint]:
    """LoRA-train on ``rows`` for ``config.epochs`` epochs, one checkpoint per epoch under ``run_dir``,
    resuming from the newest finished epoch when ``run_dir`` holds a run of the same ``identity``."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    from nait_pipeline.lib.models.model_io import load_causal_lm, load_tokenizer

    if config.epochs < 1:
        raise GradientInputError(f"warmup epochs must be >= 1, got {config.epochs}")
    stored = run_dir / "identity.json"
    if run_dir.exists() and (not stored.exists() or json.loads(stored.read_text()) != identity):
        shutil.rmtree(run_dir)  # another model, rows or config: nothing in it can be reused
    run_dir.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(identity, sort_keys=True))
    done = [e for e in range(1, config.epochs + 1) if (run_dir / f"checkpoint-{e}" / "state.pt").exists()]
    start = max(done, default=0)
    if start == config.epochs:
        return read_checkpoints(run_dir, config.epochs)

    tokenizer = load_tokenizer(model_dir)
    template = ChatTemplate(tokenizer)
    examples = [template.tokenize_row(r, config.max_length) for r in rows]
    examples = [e for e in examples if e.has_loss]
    if not examples:
        raise GradientInputError(f"no warmup row keeps a response token at max_length={config.max_length}")
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = _lora_model(load_causal_lm(model_dir, "float32", device), config)
    named = lora_parameters(model)
    parameters = [p for _, p in named]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    total = math.ceil(len(examples) / config.batch_size) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    if start:
        state = torch.load(run_dir / f"checkpoint-{start}" / "state.pt", weights_only=False)
        for (_, p), value in zip(named, state["lora"].values()):
            p.data.copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    steps_done = start * math.ceil(len(examples) / config.batch_size)
    rates: list[float] = []  # the learning rate of each step of the current epoch

    def before_step(epoch: int, step: int) -> None:
        if step == 1:
            rates.clear()
        rates.append(scheduler.get_last_lr()[0])

    def after_step(epoch: int, step: int, batch: list, mask, loss: float) -> None:
        nonlocal steps_done
        steps_done += 1
        if progress:
            progress(steps_done, total)

    def after_epoch(epoch: int) -> None:
        moments = [optimizer.state[p] for p in parameters]
        with atomic_dir(run_dir / f"checkpoint-{epoch}") as tmp:
            torch.save({"lora": {name: p.detach().cpu().clone() for name, p in named},
                        "exp_avg": [m["exp_avg"].cpu() for m in moments],
                        "exp_avg_sq": [m["exp_avg_sq"].cpu() for m in moments],
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
            (tmp / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "mean_lr": float(np.mean(rates)),
                                                             "steps": len(rates)}))

    train_epochs(model, parameters, optimizer, scheduler, examples, batch_size=config.batch_size, seed=config.seed,
                 pad_id=pad_id, epochs=range(start + 1, config.epochs + 1), where="warmup", device=device,
                 before_step=before_step, after_step=after_step, after_epoch=after_epoch)
    return read_checkpoints(run_dir, config.epochs)


def read_checkpoints(run_dir: Path, epochs: int) -> list[Checkpoint]:
    found = []
    for epoch in range(1, epochs + 1):
        meta = run_dir / f"checkpoint-{epoch}" / "checkpoint.json"
        if not meta.exists():
            raise FileNotFoundError(f"{meta} is missing: materialize warmup_adapter")
        found.append(Checkpoint(epoch, json.loads(meta.read_text())["mean_lr"], meta.parent))
    return found


def checkpoint_weights(checkpoints: Sequence[Checkpoint]) -> list[float]:
    """LESS's weights: each checkpoint's mean learning rate, renormalised to sum 1."""
    total = sum(c.mean_lr for c in checkpoints)
    if not total > 0:
        raise GradientInputError("every warmup checkpoint had learning rate 0: its weights cannot be normalised")
    return [c.mean_lr / total for c in checkpoints]


def _lora_base(model_dir: Path, config: WarmupConfig, device: str):
    """The base model wrapped with LoRA, loaded once per process: every checkpoint of every shard a run (or a
    Ray worker) featurizes overwrites all its LoRA weights and nothing else."""
    shape = (config.lora_r, config.lora_alpha, config.lora_dropout, tuple(config.lora_targets))
    return _cached_lora_base(str(model_dir), shape, device)


@functools.lru_cache(maxsize=1)
def _cached_lora_base(model_dir: str, shape: tuple, device: str):
    from nait_pipeline.lib.models.model_io import load_causal_lm

    r, alpha, dropout, targets = shape
    config = WarmupConfig(lora_r=r, lora_alpha=alpha, lora_dropout=dropout, lora_targets=list(targets))
    return _lora_model(load_causal_lm(Path(model_dir), "float32", device), config)


def load_checkpoint_model(model_dir: Path, config: WarmupConfig, checkpoint: Checkpoint, device: str = "cpu"):
    """The base model with the checkpoint's LoRA weights, in eval mode (no dropout), and its Adam moments.
    The model is this process's one LoRA model: it holds the latest checkpoint loaded."""
    import torch

    model = _lora_base(model_dir, config, device)
    state = torch.load(checkpoint.path / "state.pt", weights_only=False)
    named = lora_parameters(model)
    if [name for name, _ in named] != list(state["lora"]):
        raise GradientInputError(f"{checkpoint.path} holds other LoRA parameters than this model has")
    for (_, p), value in zip(named, state["lora"].values()):
        p.data.copy_(value.to(device))
    model.eval()
    return model, state["exp_avg"], state["exp_avg_sq"]


class _LoraGradientHooks:
    """Forward hooks keep each LoRA matrix's input and, through a hook on its output tensor, the output's
    gradient (a tensor hook fires even where the layer's input needs no gradient, as in frozen layers)."""

    def __init__(self, model):
        import torch

        order = {id(p): i for i, (_, p) in enumerate(lora_parameters(model))}
        self.modules = sorted((m for m in model.modules()
                               if isinstance(m, torch.nn.Linear) and id(m.weight) in order),
                              key=lambda m: order[id(m.weight)])
        if any(m.bias is not None and m.bias.requires_grad for m in self.modules):
            raise GradientInputError("LoRA layers with a trainable bias are not supported")
        self.inputs: dict[int, object] = {}
        self.grads: dict[int, object] = {}
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]

    def _hook(self, index: int):
        def keep(module, args, output):
            self.inputs[index] = args[0].detach()
            if output.requires_grad:
                output.register_hook(lambda grad: self.grads.__setitem__(index, grad.detach()))
        return keep

    def per_example(self):
        """[batch, num_params]: each matrix's per-example weight gradient, flattened in parameter order."""
        import torch

        missing = [i for i in range(len(self.modules)) if i not in self.grads]
        if missing:
            raise GradientInputError(f"{len(missing)} LoRA matrices received no gradient")
        parts = [torch.einsum("bto,bti->boi", self.grads[i], self.inputs[i]).flatten(1)
                 for i in range(len(self.modules))]
        self.grads.clear()
        return torch.cat(parts, dim=1)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _per_example_loss(model, input_ids, mask, labels):
    """Sum over examples of each example's mean response cross-entropy (the LM head only where a label is)."""
    import torch

    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    token_ce = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden[:, :-1][keep]).float(),
                                                 targets[keep], reduction="none")
    rows = torch.arange(len(input_ids), device=token_ce.device).unsqueeze(1).expand_as(keep)[keep]
    sums = torch.zeros(len(input_ids), device=token_ce.device).index_add(0, rows, token_ce)
    return (sums / keep.sum(1).clamp(min=1)).sum()


def default_batch_rows(device: str) -> int:
    """Rows per backward: 16 on a GPU (a batch-1 loop there is bound by kernel launches); 4 on a CPU, where
    the work is compute-bound and larger batches run slower (their activations leave the caches:
    bench/gradients.py measured 1 row 0.98x, 4 rows 1.03x, 16 rows 0.52x the batch-1 loop's speed)."""
    return 16 if device.startswith("cuda") else 4


def per_example_gradients(model, examples: Sequence[TokenizedExample], pad_id: int, batch_tokens: int = 4096,
                          max_batch_size: int = 16, on_batch: Callable[[list[int], object], None] | None = None,
                          device: str = "cpu") -> None:
    """For each batch of rows of similar length, call ``on_batch(indices, gradients[batch, num_params])``.
    Rows without a response token get a zero gradient."""
    hooks = _LoraGradientHooks(model)
    try:
        lengths = [len(e.input_ids) for e in examples]
        for batch in plan_batches(lengths, batch_tokens, max_batch_size=max_batch_size):
            input_ids, mask, labels = (t.to(device) for t in collate([examples[i] for i in batch], pad_id))
            model.zero_grad(set_to_none=True)
            _per_example_loss(model, input_ids, mask, labels).backward()
            has_response = (labels[:, 1:] != IGNORE_INDEX).any(1)
            on_batch(list(batch), hooks.per_example() * has_response.unsqueeze(1))
    finally:
        hooks.close()
        model.zero_grad(set_to_none=True)


def loop_gradients(model, examples: Sequence[TokenizedExample], pad_id: int, device: str = "cpu"):
    """The reference: one backward per row, gradients read from ``.grad``. [n, num_params]."""
    import torch

    named = lora_parameters(model)
    rows = []
    for example in examples:
        model.zero_grad(set_to_none=True)
        input_ids, mask, labels = (t.to(device) for t in collate([example], pad_id))
        if example.has_loss:
            _per_example_loss(model, input_ids, mask, labels).backward()
            rows.append(torch.cat([p.grad.flatten() for _, p in named]))
        else:
            rows.append(torch.zeros(count_parameters(model)))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def tokenize_keeping_response(template: ChatTemplate, row: dict, max_length: int) -> TokenizedExample:
    """The row rendered as for training, cut to ``max_length`` tokens. Where the prompt alone would fill the
    window (a long few-shot or reading-comprehension prompt), the window is the last ``max_length`` tokens
    instead, so the response keeps its tokens and the row has a gradient; its ``truncated`` flag is set."""
    fitted = template.tokenize_row(row, max_length)
    if fitted.has_loss or not fitted.truncated:
        return fitted
    full = template.tokenize_row(row, 1 << 30)
    return full.window(max(0, len(full.input_ids) - max_length))


def count_parameters(model) -> int:
    return sum(p.numel() for _, p in lora_parameters(model))


def adam_precondition(gradients, exp_avg, exp_avg_sq):
    """LESS's Adam feature of [n, P] gradients given the checkpoint's flattened moments [P]."""
    import torch

    beta1, beta2 = ADAM_BETAS
    m = beta1 * exp_avg + (1 - beta1) * gradients
    v = beta2 * exp_avg_sq + (1 - beta2) * gradients**2
    return m / torch.sqrt(v + ADAM_EPS)


@dataclass
class GradientFeatures:
    ids: list[str]
    vectors: np.ndarray  # [n, dim] float32, unit rows (zero rows where zero_gradient)
    zero_gradient: np.ndarray  # [n] bool
    n_tokens: np.ndarray  # [n]
    seconds: float


def gradient_features(model, exp_avg: Sequence, exp_avg_sq: Sequence, template: ChatTemplate, rows: Sequence[dict],
                      ids: Sequence[str], max_length: int, projector: RademacherProjector, preconditioning: str,
                      batch_tokens: int = 4096, progress: Callable[[int, int], None] | None = None,
                      device: str = "cpu", batch_rows: int | None = None) -> GradientFeatures:
    """Projected, normalised LoRA gradients of ``rows`` ("adam": pool rows; "sgd": target rows)."""
    import torch

    if preconditioning not in ("adam", "sgd"):
        raise ValueError(f"preconditioning must be 'adam' or 'sgd', got {preconditioning!r}")
    examples = [tokenize_keeping_response(template, r, max_length) for r in rows]
    tokenizer = template.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    flat_avg = torch.cat([t.flatten() for t in exp_avg]).to(device) if preconditioning == "adam" else None
    flat_avg_sq = torch.cat([t.flatten() for t in exp_avg_sq]).to(device) if preconditioning == "adam" else None
    vectors = np.zeros((len(rows), projector.spec.dim), np.float32)
    zero = np.zeros(len(rows), bool)
    started = time.perf_counter()
    done = 0
    pending: list[tuple[list[int], object]] = []  # float16 features waiting for one projection call

    def project_pending() -> None:
        # One projection per PROJECT_ROWS rows: each call expands the cached int8 matrix block by block,
        # a cost per call, not per row.
        if not pending:
            return
        indices = [i for batch, _ in pending for i in batch]
        features = torch.cat([f for _, f in pending]).float()
        pending.clear()
        empty = (features == 0).all(1)
        projected = projector.project(features)
        norms = projected.norm(dim=1, keepdim=True)
        projected = torch.where(empty.unsqueeze(1), torch.zeros_like(projected), projected / norms.clamp(min=1e-30))
        vectors[indices] = projected.numpy()
        zero[indices] = empty.numpy()

    def on_batch(indices: list[int], gradients) -> None:
        nonlocal done
        if not torch.isfinite(gradients).all():
            bad = sorted({ids[indices[r]] for r in torch.nonzero(~torch.isfinite(gradients).all(1)).flatten().tolist()})
            raise GradientInputError(f"non-finite gradient for rows {bad}")
        features = adam_precondition(gradients, flat_avg, flat_avg_sq) if flat_avg is not None else gradients
        features = torch.where((gradients == 0).all(1, keepdim=True), torch.zeros_like(features), features)
        pending.append((indices, features.half().cpu()))  # the official code casts to float16 before projecting
        if sum(len(batch) for batch, _ in pending) >= PROJECT_ROWS:
            project_pending()
        done += len(indices)
        if progress:
            progress(done, len(rows))

    with torch.enable_grad():
        per_example_gradients(model, examples, pad_id, batch_tokens, default_batch_rows(device) if batch_rows is None
                              else batch_rows, on_batch=on_batch, device=device)
    project_pending()
    if zero.any() and preconditioning == "sgd":
        raise GradientInputError(f"target rows without a response token (zero gradient): "
                                 f"{[ids[i] for i in np.flatnonzero(zero)]}; raise max_length")
    return GradientFeatures(ids=list(ids), vectors=vectors, zero_gradient=zero,
                            n_tokens=np.array([len(e.input_ids) for e in examples]),
                            seconds=time.perf_counter() - started)


def write_gradient_store(path: Path, features: GradientFeatures, metadata: dict) -> Path:
    raw = np.ascontiguousarray(features.vectors.astype(np.float32))
    width = raw.shape[1] * 4
    table = pa.table({
        "example_id": pa.array(features.ids, pa.string()),
        "gradient": pa.Array.from_buffers(pa.binary(width), len(raw), [None, pa.py_buffer(raw.tobytes())]),
        "zero_gradient": pa.array(features.zero_gradient),
        "n_tokens": pa.array(features.n_tokens.astype(np.int64)),
    })
    return write_parquet(table, path, {**metadata, "dim": int(raw.shape[1])}, use_dictionary=["example_id"],
                         compression={"example_id": "zstd", "gradient": "none", "zero_gradient": "zstd",
                                      "n_tokens": "zstd"})


@dataclass
class StoredGradients:
    ids: list[str]
    vectors: np.ndarray  # [n, dim] float32
    zero_gradient: np.ndarray
    metadata: dict


def read_gradient_stores(paths: Sequence[Path]) -> StoredGradients:
    """Concatenate stores of one checkpoint (pool shards), checking they share model, adapter and projection."""
    if not paths:
        raise GradientInputError("no gradient stores to read")
    metadata = read_metadata(paths[0])
    key = ("model_id", "template_hash", "adapter_version", "checkpoint", "projection", "preconditioning")
    ids, blocks, zero = [], [], []
    for path in paths:
        meta = read_metadata(path)
        if any(meta.get(k) != metadata.get(k) for k in key):
            raise GradientInputError(f"{path} was made with another model, adapter, checkpoint or projection than "
                                     f"{paths[0]}")
        table = read_table(path, memory_map=True)
        column = table.column("gradient").combine_chunks()
        raw = np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * column.type.byte_width,
                            offset=column.offset * column.type.byte_width)
        blocks.append(raw.view(np.float32).reshape(len(column), -1))
        ids += table.column("example_id").to_pylist()
        zero.append(table.column("zero_gradient").to_numpy(zero_copy_only=False))
    return StoredGradients(ids=ids, vectors=np.concatenate(blocks), zero_gradient=np.concatenate(zero),
                           metadata=metadata)


def store_identity(model_id: str, template_hash: str, adapter_version: str, checkpoint: int, projection: dict,
                   preconditioning: str, max_length: int, input_version: str) -> dict:
    return {"gradient_version": GRADIENT_VERSION, "model_id": model_id, "template_hash": template_hash,
            "adapter_version": adapter_version, "checkpoint": checkpoint, "projection": projection,
            "preconditioning": preconditioning, "max_length": max_length, "input_version": input_version}


def store_version(identity: dict) -> str:
    return sha256_json(identity)[:16]


def few_shot_rows(tasks: Sequence[str], ids: Sequence[str], rows: int) -> list[int]:
    """Indices of at most ``rows`` target rows spread over the tasks: tasks in name order take turns giving
    their next row in id order (LESS's targets are few-shot sets: MMLU 5 per subject, BBH 3 per task).
    0 keeps every row. Returned in (task, id) order, each task's rows contiguous."""
    if rows < 0:
        raise GradientInputError(f"rows must be >= 0, got {rows}")
    if rows == 0 or rows >= len(ids):
        chosen = list(range(len(ids)))
    else:
        queues: dict[str, list[int]] = {}
        for i in sorted(range(len(ids)), key=lambda i: ids[i]):
            queues.setdefault(tasks[i], []).append(i)
        chosen, turn = [], 0
        while len(chosen) < rows:
            for task in sorted(queues):
                if turn < len(queues[task]) and len(chosen) < rows:
                    chosen.append(queues[task][turn])
            turn += 1
    return sorted(chosen, key=lambda i: (tasks[i], ids[i]))
