"""One forward pass per example that yields every forward-only feature the methods need.

For every decoder layer: the token mean of the residual stream (padding masked, fp32
accumulation) and the first-token state (plus the last-token state when asked, for NAIT's R1
drift). From the same pass: the RDS+ position-weighted mean of the last layer and the mean
response-token loss (LP's P0, the perplexity baseline), so no later method needs a second pass.
A store setting (:mod:`reduction`) can keep fewer layers, a projected width and drop the pool rows'
first-token states; it is applied batch by batch, so no full-width array of the whole input is held.

Speed comes from tokenizing once, sorting by length so batches carry little padding, bounding
each batch by a token budget, running the decoder without the LM head, and applying the LM head
only to response positions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from nait_pipeline.lib.features.reduction import FIRST_STATE_RATIO, Reducer, StoreReduction, massive_dims
from nait_pipeline.lib.models.template import ChatTemplate, TokenizedExample

FEATURIZER_VERSION = "1"  # bump when the features computed below change
HF_OUTPUT = "hf_output"  # HF output_hidden_states: the last entry is taken after the final norm
PRENORM_LAST = "prenorm_last"  # the last decoder layer's own output, before the final norm


@dataclass(frozen=True)
class FeaturizerSpec:
    max_length: int = 512
    dtype: str = "auto"  # resolved by resolve_dtype before use
    batch_tokens: int = 2048  # padded tokens per forward batch (0: sized from the device, resolve_batch_tokens)
    max_batch_size: int = 64
    keep_last_token: bool = False  # target sets: also the last-token and first-token states (NAIT's drifts)
    hidden_states: str = HF_OUTPUT
    reduction: StoreReduction = StoreReduction()

    def as_dict(self) -> dict:
        # A full-width store records no reduction: its identity is what it was before reductions existed.
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reduction"}
        reduction = self.reduction.identity()
        return {**values, **({"reduction": reduction} if reduction else {}), "featurizer_version": FEATURIZER_VERSION}

    def identity(self) -> dict:
        """What makes two stores comparable (batching does not change the features)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("batch_tokens", "max_batch_size")}


@dataclass
class Features:
    """Per-example features, aligned with the input order."""

    layer_mean: np.ndarray  # [N, L, d] float32 (L kept layers, d the stored width)
    first_token: np.ndarray | None  # [N, L, d] float32; None in a reduced pool store (the same for every row)
    last_token: np.ndarray | None  # [N, L, d] float32, when requested
    rds_embedding: np.ndarray  # [N, d] float32, position-weighted mean of the last layer
    response_loss: np.ndarray  # [N] float64, NaN where truncation left no response token
    n_tokens: np.ndarray  # [N] int32, tokens fed to the model
    n_response_tokens: np.ndarray  # [N] int32
    full_length: np.ndarray  # [N] int32, tokens before truncation
    truncated: np.ndarray  # [N] bool
    stats: dict = field(default_factory=dict)
    layers: list[int] | None = None  # 1-based model layers of axis 1 (None: every layer)
    reduction: dict | None = None  # the reduction applied, as the store records it (None: full width)


class NonFiniteFeatureError(ValueError):
    """NaN or inf in activations: the run stops and names the examples."""


def tokenize_rows(template: ChatTemplate, rows: Sequence[dict], max_length: int) -> list[TokenizedExample]:
    return [template.tokenize_row(r, max_length) for r in rows]


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group indices, longest first, so that batch_size * longest <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * width > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def featurize(
    model,
    template: ChatTemplate,
    rows: Sequence[dict],
    spec: FeaturizerSpec,
    ids: Sequence[str],
    progress: Callable[[int, int, int], None] | None = None,
) -> Features:
    """Run ``model`` (a HF causal LM) once over ``rows`` (pool rows: triples or conversations)."""
    import torch

    tokens = tokenize_rows(template, rows, spec.max_length)
    n = len(tokens)
    config = model.config
    n_layers, width = config.num_hidden_layers, config.hidden_size
    masked = first_token_massive_dims(model, tokens[0].input_ids[0]) if n and spec.reduction.dim else None
    reducer = Reducer(spec.reduction, n_layers, width, masked)
    kept, stored = len(reducer.layers), spec.reduction.stored_width(width)
    keep_first = spec.reduction.is_full or spec.keep_last_token
    out = Features(
        layer_mean=np.zeros((n, kept, stored), np.float32),
        first_token=np.zeros((n, kept, stored), np.float32) if keep_first else None,
        last_token=np.zeros((n, kept, stored), np.float32) if spec.keep_last_token else None,
        rds_embedding=np.zeros((n, stored), np.float32),
        response_loss=np.full(n, np.nan, np.float64),
        n_tokens=np.array([len(t.input_ids) for t in tokens], np.int32),
        n_response_tokens=np.array([t.n_loss_tokens for t in tokens], np.int32),
        full_length=np.array([t.full_length for t in tokens], np.int32),
        truncated=np.array([t.truncated for t in tokens], bool),
        layers=reducer.layers, reduction=reducer.metadata(),
    )
    if n == 0:
        return out
    device = next(model.parameters()).device
    dtype_name = resolve_dtype(spec.dtype, device.type)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    if spec.hidden_states not in (HF_OUTPUT, PRENORM_LAST):
        raise ValueError(f"hidden_states must be {HF_OUTPUT!r} or {PRENORM_LAST!r}, got {spec.hidden_states!r}")
    pad_id = template.tokenizer.pad_token_id if template.tokenizer.pad_token_id is not None else 0
    batch_tokens = resolve_batch_tokens(spec.batch_tokens, config, device.type, dtype_name)
    capture = LayerReductions(model, reducer.layers, spec.hidden_states == PRENORM_LAST)
    started = time.perf_counter()
    done = tokens_done = 0
    try:
        with torch.inference_mode():
            for batch in plan_batches(out.n_tokens.tolist(), batch_tokens, spec.max_batch_size):
                _run_batch(model, tokens, batch, out, pad_id, device, capture, reducer)
                done += len(batch)
                tokens_done += int(out.n_tokens[batch].sum())
                if progress is not None:
                    progress(done, n, tokens_done)
    finally:
        capture.remove()
    elapsed = time.perf_counter() - started
    out.stats = {"dtype": dtype_name, "device": device.type, "batch_tokens": batch_tokens, "examples": n,
                 "tokens": int(out.n_tokens.sum()), "seconds": elapsed,
                 "tokens_per_s": float(out.n_tokens.sum() / elapsed) if elapsed else math.inf}
    check_finite(out, ids)
    return out


# The share of a GPU's free memory a batch's activations may take: a margin for the allocator and the
# hooks' float32 copies, chosen, not measured (no GPU has measured it yet; bench/gpu.py records the budget).
FREE_MEMORY_SHARE = 0.6
CPU_BATCH_TOKENS = 2048  # measured fastest on 2 CPU cores


def resolve_batch_tokens(batch_tokens: int, config, device_type: str, dtype_name: str) -> int:
    """``batch_tokens`` as given, or (0) sized from the device: 2,048 on a CPU; on a GPU the tokens whose
    activations fit in ``FREE_MEMORY_SHARE`` of its free memory."""
    if batch_tokens > 0:
        return batch_tokens
    if not device_type.startswith("cuda"):
        return CPU_BATCH_TOKENS
    import torch

    free, _ = torch.cuda.mem_get_info()
    # Bytes per padded token held at once: one layer's residual stream, attention and MLP activations (SDPA
    # never forms the T x T matrix) in the model's dtype, plus the float32 logits of response positions.
    element = 4 if dtype_name == "float32" else 2
    intermediate = getattr(config, "intermediate_size", 4 * config.hidden_size)
    per_token = element * (8 * config.hidden_size + 3 * intermediate) + 4 * config.vocab_size
    return int(min(65536, max(512, FREE_MEMORY_SHARE * free // per_token)))


class LayerReductions:
    """Forward hooks that reduce each kept decoder layer's states as the layer produces them (masked token
    mean, first and last token), so a batch never holds every layer's [B, T, d] states at once, as
    ``output_hidden_states`` would. The last layer's entry is the final-normed output the model returns
    (HF's convention), or with ``prenorm_last`` the last layer's own output, captured by its hook."""

    def __init__(self, model, layers: Sequence[int], prenorm_last: bool) -> None:
        self.num_layers = model.config.num_hidden_layers
        self.reduced: dict[int, tuple] = {}
        self.last_states = None
        self.batch: tuple | None = None  # (mask [B, T], token counts [B, 1], rows, last positions) of this batch
        hooked = [layer for layer in layers if layer < self.num_layers] + ([self.num_layers] if prenorm_last else [])
        self.handles = [model.model.layers[layer - 1].register_forward_hook(self._hook(layer)) for layer in hooked]

    def _hook(self, layer: int):
        def capture(_module, _inputs, output) -> None:
            states = output[0] if isinstance(output, tuple) else output
            if layer == self.num_layers:
                self.last_states = states
            else:
                self.reduced[layer] = self.reduce(states)
        return capture

    def reduce(self, states) -> tuple:
        mask, counts, rows, last_pos = self.batch
        states = states.float()
        return (states * mask.unsqueeze(-1)).sum(1) / counts, states[:, 0], states[rows, last_pos]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def first_token_massive_dims(model, token_id: int) -> np.ndarray:
    """[L, d] massive dimensions of the state of ``token_id`` at position 0, from a one-token forward: under
    causal attention the first state of every row starting with that token, whatever follows."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        result = model.model(input_ids=torch.tensor([[token_id]], device=device), output_hidden_states=True,
                             use_cache=False)
    first = torch.stack([h[0, 0].float() for h in result.hidden_states[1:]]).cpu().numpy()
    return massive_dims(first, ratio=FIRST_STATE_RATIO)


def _to_device(tensor, device):
    """Host -> GPU through pinned memory, asynchronously; as is on a CPU."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _run_batch(model, tokens, batch, out: Features, pad_id: int, device, capture: LayerReductions,
               reducer: Reducer) -> None:
    import torch

    lengths = [len(tokens[i].input_ids) for i in batch]
    width = max(lengths)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, index in enumerate(batch):
        ids = tokens[index].input_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1.0
    input_ids, mask = _to_device(input_ids, device), _to_device(mask, device)
    rows = torch.arange(len(batch), device=device)
    last_pos = torch.tensor(lengths, device=device) - 1
    capture.batch = (mask, mask.sum(1, keepdim=True), rows, last_pos)
    result = model.model(input_ids=input_ids, attention_mask=mask.long(), use_cache=False)
    final_normed = result.last_hidden_state  # what the LM head reads
    last = capture.last_states if capture.last_states is not None else final_normed
    capture.last_states = None
    per_layer = [capture.reduced.pop(layer) if layer < capture.num_layers else capture.reduce(last)
                 for layer in reducer.layers]
    index = np.asarray(batch)
    out.layer_mean[index] = reducer.kept_vectors(torch.stack([p[0] for p in per_layer], 1)).cpu().numpy()
    if out.first_token is not None:
        out.first_token[index] = reducer.kept_vectors(torch.stack([p[1] for p in per_layer], 1)).cpu().numpy()
    if out.last_token is not None:
        out.last_token[index] = reducer.kept_vectors(torch.stack([p[2] for p in per_layer], 1)).cpu().numpy()

    # RDS+: weights k / sum_j j over the K real tokens (SGPT position weighting) on the last layer.
    positions = torch.arange(1, width + 1, device=device, dtype=torch.float32).unsqueeze(0) * mask
    weights = positions / positions.sum(1, keepdim=True)
    out.rds_embedding[index] = reducer.embedding((last.float() * weights.unsqueeze(-1)).sum(1)).cpu().numpy()

    for row, loss in enumerate(response_losses(model, final_normed, input_ids, [tokens[i] for i in batch])):
        out.response_loss[batch[row]] = loss


def response_losses(model, final_hidden, input_ids, tokens: Sequence[TokenizedExample]) -> list[float]:
    """Mean cross-entropy of each row's response tokens (every assistant turn of a conversation; NaN where
    none survived truncation).

    Position t predicts token t+1, and the LM head runs on response positions only: at a 49k
    vocabulary that is a quarter of a small model's FLOPs per token.
    """
    import torch

    lm_head = model.get_output_embeddings()
    losses = []
    for row, example in enumerate(tokens):
        targets = [p for start, end in example.spans() for p in range(max(start, 1), end)]
        if not targets:
            losses.append(float("nan"))
            continue
        positions = torch.tensor(targets, device=final_hidden.device)
        logits = lm_head(final_hidden[row, positions - 1]).float()
        losses.append(float(torch.nn.functional.cross_entropy(logits, input_ids[row, positions])))
    return losses


def check_finite(features: Features, ids: Sequence[str]) -> None:
    for name in ("layer_mean", "first_token", "last_token", "rds_embedding"):
        values = getattr(features, name)
        if values is None:
            continue
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(1)
        if bad.any():
            named = [ids[i] for i in np.flatnonzero(bad)[:20]]
            raise NonFiniteFeatureError(f"non-finite {name} for {int(bad.sum())} example(s): {named}")
    bad_loss = np.isinf(features.response_loss)
    if bad_loss.any():
        raise NonFiniteFeatureError(f"infinite response loss for: {[ids[i] for i in np.flatnonzero(bad_loss)[:20]]}")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bf16 where the hardware computes it natively (GPU, AMX or AVX512-BF16 CPUs), else fp32.

    On CPUs without native bf16 (such as the 2-core AVX-512 machines this project is developed on)
    bf16 matrix products are emulated and run about 4x slower than fp32.
    """
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
