"""Seeded Rademacher random projection of wide gradient vectors (LESS uses TRAK's, seed 0).

A projection ``P`` of shape [num_params, dim] with entries +-1 is never held as float: it is cut into
blocks of ``block_rows`` parameter rows, each generated from its own seed (``seed``, block number), so
any block can be made again on its own and the result does not depend on how many rows a batch holds.
Blocks are kept in memory as int8 when the whole matrix fits ``cache_bytes`` (num_params x dim bytes),
else regenerated per call. ``x @ P`` is accumulated block by block in float32.

The scale (+-1, not +-1/sqrt(dim)) does not matter: every projected gradient is L2-normalised.
Two stores can only be compared when their projections are identical: :attr:`identity` names kind,
seed, width and input width, and :func:`check_same_projection` refuses a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

PROJECTION_VERSION = "1"


class ProjectionMismatchError(ValueError):
    """Gradients projected differently (seed, width, input width) cannot be compared."""


@dataclass(frozen=True)
class ProjectionSpec:
    num_params: int
    dim: int = 1024
    seed: int = 0
    kind: str = "rademacher"

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "dim": self.dim, "num_params": self.num_params,
                "version": PROJECTION_VERSION}


class RademacherProjector:
    def __init__(self, spec: ProjectionSpec, block_rows: int = 32_768, cache_bytes: int = 2 << 30):
        if spec.kind != "rademacher":
            raise ValueError(f"unknown projection kind {spec.kind!r}")
        if spec.dim < 1 or spec.num_params < 1:
            raise ValueError(f"projection needs positive widths, got {spec.num_params} -> {spec.dim}")
        self.spec = spec
        self.block_rows = block_rows
        self._cache: dict[int, object] | None = {} if spec.num_params * spec.dim <= cache_bytes else None

    def _block(self, number: int):
        import torch

        if self._cache is not None and number in self._cache:
            return self._cache[number]
        rows = min(self.block_rows, self.spec.num_params - number * self.block_rows)
        generator = torch.Generator().manual_seed(self.spec.seed * 1_000_003 + number)
        signs = torch.randint(0, 2, (rows, self.spec.dim), generator=generator, dtype=torch.int8) * 2 - 1
        if self._cache is not None:
            self._cache[number] = signs
        return signs

    def project(self, vectors):
        """[n, num_params] float tensor -> [n, dim] float32."""
        import torch

        if vectors.shape[-1] != self.spec.num_params:
            raise ProjectionMismatchError(f"vectors have {vectors.shape[-1]} values, the projection expects "
                                          f"{self.spec.num_params}")
        out = torch.zeros((vectors.shape[0], self.spec.dim), dtype=torch.float32)
        for number, start in enumerate(range(0, self.spec.num_params, self.block_rows)):
            block = vectors[:, start : start + self.block_rows].float()
            out += block @ self._block(number).float()
        return out


def check_same_projection(first: dict, second: dict, what: str) -> None:
    if first != second:
        raise ProjectionMismatchError(f"{what}: projections differ ({first} vs {second}); featurize both with the "
                                      "same seed and dimension")
