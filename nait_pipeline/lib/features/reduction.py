"""What a forward store keeps per row: a layer subset, a per-layer random projection and the float width.

At full width a 32-layer, 4,096-wide model's store holds 2 x 131,072 values per row (token means and
first-token states): ~0.5 MiB, 0.5 TiB per million rows. A reduction cuts that at featurization time,
batch by batch, before anything is written:

- ``layers``: which decoder layers are kept (1-based; all by default);
- ``dim``: each kept layer's d-wide vectors (and the RDS+ embedding) multiplied by one seeded Rademacher
  matrix ``R`` [d, dim] with entries +-1/sqrt(dim) (Johnson-Lindenstrauss: dot products and cosines are
  kept in expectation). Dimensions where the model's first-token state is a massive activation (Sun et
  al. 2024: |f| > 100 and > 100 x the first state's median) are zeroed before projecting, since one of them
  would otherwise dominate every projected coordinate; the first-token state comes from a one-token
  forward, so the mask is a property of the model and its template, recorded in the store;
- ``float_width``: ``auto`` keeps float16 where every value fits (else float32), or force one;
- ``bits``: pool shards keep their token means and RDS+ embedding as ``bits``-bit codes, one codebook per
  dimension fitted on the shard's own rows (``quantize.py``): no rotation, so NAIT-C's per-dimension
  cleaning and z-scoring apply to the decoded values as they would to the full ones. Target sets (a few
  hundred rows) stay at the float width.

Pool stores of a reduced setting drop the per-row first-token state: with causal attention it is the
same for every row (the same first token), and no pool scorer reads it; target stores keep it for NAIT's
drift. Everything linear that NAIT-C does commutes with ``R``: removing the template prefix
``(K m - S) / (K - P)`` is exact when the prefix sums ``S`` are reduced the same way
(:meth:`Reducer.vectors` on them), and z-scoring and directions work in whatever space is stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nait_pipeline.lib.features.quantize import BITS as QUANTIZE_BITS

REDUCTION_VERSION = "1"
FLOAT_WIDTHS = ("auto", "float16", "float32")
MASSIVE_ABS = 100.0
MASSIVE_RATIO = 1000.0
# At featurization there is no pool to measure a typical magnitude on, only the first state, whose median
# the sink inflates ~10-50x: 100 x that median flags on SmolLM2-135M the dimensions NAIT-C's 1000 x the
# pool's median flags (one per layer in layers 3-29; NAIT-C two in some of them).
FIRST_STATE_RATIO = 100.0
# Up to this many values per row (layers x width) a store keeps every layer: SmolLM2-135M has 30 x 576 =
# 17,280 and a 1B Llama 16 x 2,048 = 32,768; wider models keep every 3rd layer as 4-bit codes
# (bench/compact_store.py).
FULL_WIDTH_MAX_VALUES = 32_768


class ReductionMismatchError(ValueError):
    """Two stores reduced differently (layers, projection, mask) cannot be compared."""


def massive_dims(first: np.ndarray, typical: np.ndarray | None = None, abs_min: float = MASSIVE_ABS,
                 ratio: float = MASSIVE_RATIO) -> np.ndarray:
    """[L, d] bool: dimensions whose first-token state is a massive activation: above ``abs_min`` and
    ``ratio`` x the layer's typical magnitude (``typical`` [L]: by default the median magnitude of the
    first state itself, which the sink inflates, so this undercounts rather than overcounts)."""
    magnitude = np.abs(first)
    scale = np.median(magnitude, axis=-1) if typical is None else np.asarray(typical)
    return (magnitude > abs_min) & (magnitude > ratio * scale[:, None])


@dataclass(frozen=True)
class StoreReduction:
    layers: tuple[int, ...] = ()  # 1-based decoder layers kept; () keeps every layer
    dim: int = 0  # projected width per layer; 0 keeps the model's width
    seed: int = 0
    float_width: str = "auto"
    mask_massive: bool = True  # zero the first token's massive dimensions before projecting
    bits: int = 0  # pool shards' vectors as codes of this many bits per value; 0 keeps the float width

    def __post_init__(self) -> None:
        if self.bits and self.bits not in QUANTIZE_BITS:
            raise ValueError(f"bits must be 0 (the float width) or one of {QUANTIZE_BITS}, got {self.bits}")
        if self.float_width not in FLOAT_WIDTHS:
            raise ValueError(f"float_width must be one of {FLOAT_WIDTHS}, got {self.float_width!r}")
        if self.dim < 0:
            raise ValueError(f"the projected width must be 0 (full width) or positive, got {self.dim}")
        if any(layer < 1 for layer in self.layers) or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be distinct 1-based layer numbers in order, got {list(self.layers)}")

    @property
    def is_full(self) -> bool:
        return not self.layers and not self.dim and self.float_width == "auto" and not self.bits

    def identity(self) -> dict | None:
        """What a store's identity records (None at full width: stores made before reductions existed
        keep their identity)."""
        if self.is_full:
            return None
        identity = {**asdict(self), "layers": list(self.layers), "version": REDUCTION_VERSION}
        if not self.bits:
            del identity["bits"]  # stores reduced before codes existed keep their identity
        return identity

    def kept_layers(self, num_layers: int) -> list[int]:
        if not self.layers:
            return list(range(1, num_layers + 1))
        if self.layers[-1] > num_layers:
            raise ValueError(f"layer {self.layers[-1]} asked for, the model has {num_layers}")
        return list(self.layers)

    def describe(self, num_layers: int) -> str:
        if self.is_full:
            return "full width"
        layers = self.kept_layers(num_layers)
        width = (f"projected to {self.dim} (seed {self.seed}{'' if self.mask_massive else ', massive dims kept'})"
                 if self.dim else "full width")
        kept = "every layer" if len(layers) == num_layers else f"{len(layers)} of {num_layers} layers {layers}"
        return (f"{kept}, {width}" + ("" if self.float_width == "auto" else f", {self.float_width}")
                + (f", pool vectors as {self.bits}-bit codes" if self.bits else ""))

    def stored_width(self, width: int) -> int:
        return self.dim or width

    def pool_values_per_row(self, num_layers: int, width: int) -> int:
        """Values a pool row keeps: token means of the kept layers (plus first-token states at full width)
        and the RDS+ embedding."""
        per_layer = len(self.kept_layers(num_layers)) * self.stored_width(width)
        return per_layer * (1 if not self.is_full else 2) + self.stored_width(width)

    @classmethod
    def parse(cls, layers: str, dim: int, seed: int = 0, float_width: str = "auto", num_layers: int = 0,
              bits: int = 0) -> StoreReduction:
        """From settings: ``layers`` is ``all``, ``every:K`` (every K-th layer counted back from the last,
        which is always kept), ``last:K``, or a comma list such as ``4,8,12``."""
        text = layers.strip().lower()
        if text in ("", "all"):
            chosen: tuple[int, ...] = ()
        elif text.startswith(("every:", "last:")):
            if num_layers < 1:
                raise ValueError(f"{layers!r} needs the model's layer count")
            kind, _, count = text.partition(":")
            step = int(count)
            if step < 1:
                raise ValueError(f"{layers!r}: the count must be positive")
            chosen = tuple(range(num_layers, 0, -step))[::-1] if kind == "every" \
                else tuple(range(max(1, num_layers - step + 1), num_layers + 1))
        else:
            try:
                chosen = tuple(int(part) for part in text.split(","))
            except ValueError:
                raise ValueError(f"layers must be 'all', 'every:K', 'last:K' or a comma list, got {layers!r}") from None
        reduction = cls(layers=chosen, dim=dim, seed=seed, float_width=float_width, bits=bits)
        if num_layers:
            reduction.kept_layers(num_layers)
        return reduction

    @classmethod
    def default_for(cls, num_layers: int, width: int) -> StoreReduction:
        """Full width where it is cheap; for wide models every 3rd layer as 4-bit codes, the smallest setting
        bench/compact_store.py measured to keep NAIT, NAIT-C and RDS+ at a top-10 % overlap >= 0.95 on every
        capability (27 KiB per row at 32 x 4,096, 20x smaller than full; README "Scaling"). A projection
        (``dim``) is an explicit choice: measured, it keeps NAIT (unmasked) but not NAIT-C or RDS+."""
        if num_layers * width <= FULL_WIDTH_MAX_VALUES:
            return cls()
        return cls(layers=tuple(range(num_layers, 0, -3))[::-1], bits=4)


def resolve(layers: str, dim: int, seed: int, float_width: str, num_layers: int, width: int,
            bits: int = -1) -> StoreReduction:
    """The store setting for a model: ``layers == "auto"``, ``dim < 0`` and ``bits < 0`` take the values
    :meth:`StoreReduction.default_for` picks for this model's shape; anything else is used as given."""
    default = StoreReduction.default_for(num_layers, width)
    auto_layers = layers.strip().lower() == "auto"
    kept = default.layers if auto_layers else StoreReduction.parse(layers, 0, num_layers=num_layers).layers
    return StoreReduction(layers=kept, dim=default.dim if dim < 0 else dim, seed=seed, float_width=float_width,
                          bits=default.bits if bits < 0 else bits)


class Reducer:
    """A reduction bound to a model's shape and its massive-dimension mask, applied to torch tensors
    (the featurizer's batches) or NumPy arrays (the template prefix, benchmarks)."""

    def __init__(self, reduction: StoreReduction, num_layers: int, width: int, masked: np.ndarray | None = None):
        self.reduction = reduction
        self.num_layers, self.width = num_layers, width
        self.layers = reduction.kept_layers(num_layers)
        self.index = np.asarray(self.layers) - 1
        self.masked = np.zeros((num_layers, width), bool) if masked is None or not reduction.dim \
            or not reduction.mask_massive else np.asarray(masked, bool)
        if self.masked.shape != (num_layers, width):
            raise ValueError(f"mask shape {self.masked.shape} is not ({num_layers}, {width})")
        self.projection = _rademacher(width, reduction.dim, reduction.seed) if reduction.dim else None

    @classmethod
    def from_metadata(cls, meta: dict, num_layers: int) -> Reducer:
        """The reducer a store recorded (to bring full-width states, such as the template prefix's, into
        its space)."""
        reduction = StoreReduction(layers=tuple(meta["layers"]), dim=int(meta["dim"]), seed=int(meta["seed"]),
                                   float_width=meta["float_width"], mask_massive=bool(meta.get("mask_massive", True)),
                                   bits=int(meta.get("bits", 0)))
        masked = np.zeros((num_layers, int(meta["model_width"])), bool)
        for layer, dims in (meta.get("masked_dims") or {}).items():
            masked[int(layer) - 1, dims] = True
        return cls(reduction, num_layers, int(meta["model_width"]), masked)

    def metadata(self) -> dict | None:
        """The reduction as a store records it: the setting, the kept layers and the masked dimensions."""
        if self.reduction.is_full:
            return None
        masked = {str(layer): np.flatnonzero(self.masked[layer - 1]).tolist() for layer in self.layers}
        return {**self.reduction.identity(), "kept_layers": self.layers,
                "masked_dims": {k: v for k, v in masked.items() if v}, "model_width": self.width}

    def vectors(self, values):
        """[n, L, d] -> [n, L', dim] (torch tensor or NumPy array, float32)."""
        import torch

        tensor, as_numpy = _as_tensor(values)
        kept = tensor[:, torch.from_numpy(self.index).to(tensor.device)]
        out = self._project(kept, self.masked[self.index])
        return out.cpu().numpy() if as_numpy else out

    def kept_vectors(self, values):
        """[n, L', d] states of the kept layers only (the featurizer reduces no other) -> [n, L', dim]."""
        tensor, as_numpy = _as_tensor(values)
        out = self._project(tensor, self.masked[self.index])
        return out.cpu().numpy() if as_numpy else out

    def embedding(self, values):
        """[n, d] last-layer vectors (the RDS+ embedding) -> [n, dim], the last layer's mask applied."""
        if self.projection is None:
            return values
        tensor, as_numpy = _as_tensor(values)
        out = self._project(tensor, self.masked[-1])
        return out.cpu().numpy() if as_numpy else out

    def _project(self, tensor, masked: np.ndarray):
        """``tensor`` [..., d] with the ``masked`` dimensions zeroed, times the projection (as is without one)."""
        import torch

        if self.projection is None:
            return tensor
        keep = torch.from_numpy(~masked).to(tensor.device, torch.float32)
        return (tensor * keep) @ torch.from_numpy(self.projection).to(tensor.device)


def _as_tensor(values):
    """(float32 torch tensor, whether ``values`` was a NumPy array)."""
    import torch

    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values, np.float32)), True
    return values.float(), False


def _rademacher(width: int, dim: int, seed: int) -> np.ndarray:
    """[width, dim] float32 with entries +-1/sqrt(dim), the same for a seed on every machine."""
    signs = np.random.default_rng([seed, width, dim]).integers(0, 2, size=(width, dim), dtype=np.int8) * 2 - 1
    return (signs / np.sqrt(dim)).astype(np.float32)


def check_same_reduction(first: dict | None, second: dict | None, first_name: str, second_name: str) -> None:
    """Refuse to compare stores reduced differently, naming both settings."""
    if (first or None) != (second or None):
        describe = lambda meta: "full width" if not meta else (  # noqa: E731
            f"layers {meta.get('kept_layers')}, dim {meta.get('dim') or 'full'} (seed {meta.get('seed')}), "
            f"{meta.get('float_width')}, {meta.get('bits') or 'no'} bit codes, masked {sum(len(v) for v in (meta.get('masked_dims') or {}).values())} dims")
        raise ReductionMismatchError(f"{first_name} is stored with {describe(first)} but {second_name} with "
                                     f"{describe(second)}: featurize both with the same store setting")
