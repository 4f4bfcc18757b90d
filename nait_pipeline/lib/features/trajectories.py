"""Perplexity trajectories: a selector model fine-tuned over pool rows, with every row's response
perplexity before training (P0) and after each epoch (P1..PE). The feature kind Learning Percentage
reads (methods.md section 6.2 steps 2-3).

- Training is full fine-tuning with the official recipe's shape (AdamW, weight decay 0, cosine
  schedule with 3 % warmup, loss on response tokens only), in the project's chat/IT template, batched
  by :func:`~nait_pipeline.lib.models.train.length_grouped_batches` (seeded per epoch).
- Perplexity passes are forward-only, batched by the featurizer's token budget
  (:func:`~nait_pipeline.lib.features.featurize.plan_batches`). Per example
  ``P = exp(sum(token_CE) / count_nonzero(token_CE))`` over response tokens, as the official script
  computes it (a token predicted with CE exactly 0 does not count).
- A row whose response is empty after truncation has no perplexity: its P values are stored as 0
  and ``no_response`` is true (LP gives it a documented value, never NaN).
- Resumable per epoch: after each epoch the perplexities and a checkpoint (weights, optimizer,
  scheduler and RNG states) are written atomically; a killed run restarts from the last finished
  epoch and produces the same perplexities. Only the newest checkpoint is kept.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from nait_pipeline.lib.features.featurize import FeaturizerSpec, plan_batches
from nait_pipeline.lib.io.hashing import sha256_json
from nait_pipeline.lib.io.lake import atomic_dir, read_table, write_parquet
from nait_pipeline.lib.models.template import ChatTemplate, TokenizedExample
from nait_pipeline.lib.models.train import collate, train_epochs

TRAJECTORY_VERSION = "1"


@dataclass(frozen=True)
class SelectorConfig:
    epochs: int = 3
    """E: perplexities are recorded before training and after each of the E epochs (official: 3)."""
    learning_rate: float = 2e-5
    """Full fine-tuning learning rate (official: 2e-5, cosine, warmup 0.03, weight decay 0)."""
    batch_size: int = 8
    """Rows per optimizer step (official: 4 x 8 gradient accumulation on a GPU)."""
    max_length: int = 512
    """Tokens per example; longer ones are truncated (official: 512)."""
    warmup_ratio: float = 0.03
    seed: int = 0
    batch_tokens: int = FeaturizerSpec().batch_tokens
    """Padded tokens per forward batch of the perplexity passes: the featurizer's budget (2,048 ran the passes
    1.13x faster than 4,096 on 96 alpaca rows here, 2026-12-03, matching the featurizer's own rate)."""

    def as_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What the trajectories depend on: batching only groups the same forward passes."""
        return {k: v for k, v in self.as_dict().items() if k != "batch_tokens"}


@dataclass
class Trajectories:
    ids: list[str]
    perplexities: np.ndarray  # [N, E+1] float64: P0 (before training), P1..PE
    no_response: np.ndarray  # [N] bool
    response_tokens: np.ndarray  # [N] int
    train_tokens_per_s: float
    eval_tokens_per_s: float
    reused_epochs: int  # perplexity columns read from an earlier (killed or finished) run
    identity: dict  # selector model, template, rows and config: what the store version hashes
    stats: dict  # seconds and tokens (training and perplexity passes) this run spent; reused epochs cost none

    @property
    def store_version(self) -> str:
        return sha256_json(self.identity)[:16]


class TrajectoryInputError(ValueError):
    """Rows the selector cannot train on, or a store written for other inputs."""


def response_perplexities(model, examples: Sequence[TokenizedExample], pad_id: int, batch_tokens: int,
                          device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per-example response perplexity and the count of response tokens it averages over.

    Rows are grouped longest first under a padded-token budget, so a forward batch holds rows of
    similar length. Rows without a response token get perplexity 0 and count 0.
    """
    import torch

    lengths = [len(e.input_ids) for e in examples]
    perplexity = np.zeros(len(examples), np.float64)
    counted = np.zeros(len(examples), np.int64)
    head = model.get_output_embeddings()
    with torch.inference_mode():
        for batch in plan_batches(lengths, batch_tokens, max_batch_size=64):
            input_ids, mask, labels = (t.to(device) for t in collate([examples[i] for i in batch], pad_id))
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != -100
            if not keep.any():
                continue
            token_ce = torch.nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep],
                                                         reduction="none").double()
            rows = torch.arange(len(batch), device=token_ce.device).unsqueeze(1).expand_as(keep)[keep]
            sums = torch.zeros(len(batch), dtype=torch.float64, device=token_ce.device).index_add_(0, rows, token_ce)
            nonzero = torch.zeros(len(batch), dtype=torch.float64, device=token_ce.device).index_add_(
                0, rows, (token_ce != 0).double())
            for row, index in enumerate(batch):
                if nonzero[row] > 0:
                    perplexity[index] = math.exp(float(sums[row]) / float(nonzero[row]))
                    counted[index] = int(nonzero[row])
    if not np.isfinite(perplexity).all():
        raise FloatingPointError("a response perplexity is not finite (loss overflow): lower the learning rate")
    return perplexity, counted


def store_identity(model_id: str, template_hash: str, ids: Sequence[str], content_hashes: Sequence[str],
                   config: SelectorConfig) -> dict:
    return {"trajectory_version": TRAJECTORY_VERSION, "selector_model_id": model_id,
            "template_hash": template_hash, "rows": sha256_json([list(ids), list(content_hashes)])[:16],
            "config": config.identity()}


class _RunDir:
    """The per-epoch files of one selector run: `identity.json`, `ppl_epoch_<e>.parquet`, `checkpoint/`."""

    def __init__(self, root: Path, identity: dict):
        self.root = root
        if root.exists() and self._identity() != identity:
            shutil.rmtree(root)  # written for other rows, model or config: nothing in it can be reused
        root.mkdir(parents=True, exist_ok=True)
        (root / "identity.json").write_text(json.dumps(identity, sort_keys=True))

    def _identity(self) -> dict | None:
        path = self.root / "identity.json"
        return json.loads(path.read_text()) if path.exists() else None

    def perplexity_path(self, epoch: int) -> Path:
        return self.root / f"ppl_epoch_{epoch}.parquet"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    def checkpoint_epoch(self) -> int:
        """The epoch the checkpoint holds the state after, or 0 (the base model) when there is none."""
        meta = self.checkpoint / "epoch.json"
        return json.loads(meta.read_text())["epoch"] if meta.exists() else 0

    def read_perplexities(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        table = read_table(self.perplexity_path(epoch))
        return table.column("perplexity").to_numpy(), table.column("response_tokens").to_numpy()


def train_selector(model_dir: Path, model_id: str, rows: Sequence[dict], ids: Sequence[str],
                   content_hashes: Sequence[str], config: SelectorConfig, run_dir: Path,
                   progress: Callable[[str, int, int, int], None] | None = None,
                   device: str = "cpu") -> Trajectories:
    """Fine-tune the selector at ``model_dir`` on ``rows`` for ``config.epochs`` epochs and return the
    perplexity trajectories, resuming from the newest finished epoch stored under ``run_dir``.

    ``progress(stage, done, total, tokens)`` is called during training and the perplexity passes (rows
    and tokens done so far in that stage).
    """
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from nait_pipeline.lib.models.model_io import load_causal_lm, load_tokenizer

    if not rows:
        raise TrajectoryInputError("no rows to train the selector on")
    if config.epochs < 1:
        raise TrajectoryInputError(f"epochs must be >= 1, got {config.epochs}")
    if len(set(ids)) != len(ids):
        raise TrajectoryInputError("example ids are not unique")
    tokenizer = load_tokenizer(model_dir)
    template = ChatTemplate(tokenizer)
    examples = [template.tokenize_row(r, config.max_length) for r in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    identity = store_identity(model_id, template.template_hash, ids, content_hashes, config)
    run = _RunDir(run_dir, identity)
    trainable = [e for e in examples if e.has_loss]
    if not trainable:
        raise TrajectoryInputError(f"every row lost its response to truncation at max_length={config.max_length}")
    epochs = range(config.epochs + 1)
    reused = sum(run.perplexity_path(e).exists() for e in epochs)
    if reused == len(epochs):
        return _collect(run, identity, ids, config, reused, 0, 0.0, 0, 0.0)

    torch.manual_seed(config.seed)
    model = load_causal_lm(model_dir, "float32", device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(trainable) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    start_epoch = run.checkpoint_epoch()
    if start_epoch:
        state = torch.load(run.checkpoint / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])

    eval_tokens, eval_seconds, train_tokens, train_seconds = 0, 0.0, 0, 0.0

    def evaluate(epoch: int) -> None:
        nonlocal eval_tokens, eval_seconds
        if run.perplexity_path(epoch).exists():
            return
        model.eval()
        started = time.perf_counter()
        if progress:
            progress(f"perplexity after epoch {epoch}" if epoch else "perplexity before training", 0, len(examples), 0)
        perplexity, counted = response_perplexities(model, examples, pad_id, config.batch_tokens, device)
        eval_seconds += time.perf_counter() - started
        tokens = sum(len(e.input_ids) for e in examples)
        eval_tokens += tokens
        if progress:
            progress(f"perplexity after epoch {epoch}" if epoch else "perplexity before training",
                     len(examples), len(examples), tokens)
        write_parquet(pa.table({"example_id": list(ids), "perplexity": perplexity, "response_tokens": counted}),
                      run.perplexity_path(epoch), {"epoch": epoch})

    evaluate(start_epoch)
    epoch_started, done, epoch_tokens = 0.0, 0, 0

    def before_epoch(epoch: int) -> None:
        nonlocal epoch_started, done, epoch_tokens
        epoch_started, done, epoch_tokens = time.perf_counter(), 0, 0
        if progress:  # the stage starts its clock here, not after the first batch
            progress(f"selector epoch {epoch}/{config.epochs}", 0, len(trainable), 0)

    def after_step(epoch: int, step: int, batch: list, mask, loss: float) -> None:
        nonlocal done, epoch_tokens
        done += len(batch)
        epoch_tokens += int(mask.sum())
        if progress:
            progress(f"selector epoch {epoch}/{config.epochs}", done, len(trainable), epoch_tokens)

    def after_epoch(epoch: int) -> None:
        nonlocal train_tokens, train_seconds
        train_tokens += epoch_tokens
        train_seconds += time.perf_counter() - epoch_started
        evaluate(epoch)
        with atomic_dir(run.checkpoint) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
            (tmp / "epoch.json").write_text(json.dumps({"epoch": epoch}))

    train_epochs(model, parameters, optimizer, scheduler, trainable, batch_size=config.batch_size, seed=config.seed,
                 pad_id=pad_id, epochs=range(start_epoch + 1, config.epochs + 1), where="selector", device=device,
                 before_epoch=before_epoch, after_step=after_step, after_epoch=after_epoch)

    return _collect(run, identity, ids, config, reused, train_tokens, train_seconds, eval_tokens, eval_seconds)


def _collect(run: _RunDir, identity: dict, ids: Sequence[str], config: SelectorConfig, reused: int, train_tokens: int,
             train_seconds: float, eval_tokens: int, eval_seconds: float) -> Trajectories:
    columns = [run.read_perplexities(e) for e in range(config.epochs + 1)]
    if any(table_ids != list(ids) for table_ids in (read_table(run.perplexity_path(e), columns=["example_id"])
                                                    .column("example_id").to_pylist()
                                                    for e in range(config.epochs + 1))):
        raise TrajectoryInputError(f"{run.root} holds perplexities of other rows: delete it and rerun")
    counted = columns[0][1]
    return Trajectories(ids=list(ids), perplexities=np.stack([c[0] for c in columns], axis=1),
                        no_response=counted == 0, response_tokens=counted,
                        train_tokens_per_s=train_tokens / train_seconds if train_seconds else float("nan"),
                        eval_tokens_per_s=eval_tokens / eval_seconds if eval_seconds else float("nan"),
                        reused_epochs=reused, identity=identity,
                        stats={"seconds": round(train_seconds + eval_seconds, 2), "tokens": train_tokens + eval_tokens})


def discard_checkpoint(run_dir: Path) -> None:
    """Free the disk a finished run's checkpoint holds (weights and Adam state: 3x the model)."""
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)


def trajectory_table(trajectories: Trajectories) -> pa.Table:
    """One row per example: ``p0..pE``, the response token count and the ``no_response`` flag."""
    columns = {"example_id": trajectories.ids}
    for epoch in range(trajectories.perplexities.shape[1]):
        columns[f"p{epoch}"] = trajectories.perplexities[:, epoch]
    columns["response_tokens"] = trajectories.response_tokens
    columns["no_response"] = trajectories.no_response
    return pa.table(columns)
