"""What the depth-pruning methods share: how many blocks a ratio asks for, and the shapes
without data."""

from __future__ import annotations

from harness.method import Knob, Method, Target
from harness.models.adapters import ModelAdapter


class DepthPruning(Method):
    """A method that removes whole decoder blocks. A block holds about 1/L of the blocks'
    parameters, so ratios come in steps (``discrete_ratios``): a ratio target removes the number
    of blocks whose share of the blocks' parameters is nearest to it; ``-o NAME.blocks=N``
    removes N, as papers state their settings."""

    kind = "structured"
    discrete_ratios = True
    native_knob = "blocks"
    knobs = {"blocks": Knob(int, 0, "blocks to remove (0: as many as the ratio asks)")}

    def block_count(self, model: ModelAdapter, target: Target) -> int:
        """N from the ``blocks`` knob, else the N whose share of the blocks' parameters, taking
        blocks of the mean size, is nearest to the target ratio (ties: fewer blocks)."""
        depth = len(model.blocks)
        n = self.option(target, "blocks")
        if n <= 0:
            n = min(range(depth), key=lambda k: abs(k / depth - target.ratio))
        if not 0 < n < depth:
            raise ValueError(f"{self.name} removes between 1 and {depth - 1} of this model's {depth} blocks, "
                             f"asked {n} (ratio {target.ratio:g})")
        return n

    @staticmethod
    def allocation(depth: int, removed: list[int]) -> dict[str, float]:
        """The report's per-layer allocation: each block of the original numbering, 1 if removed."""
        return {f"layers.{i}": float(i in removed) for i in range(depth)}

    def ratio_steps(self, model: ModelAdapter) -> list[float]:
        depth = len(model.blocks)
        return [k / depth for k in range(1, depth)]

    def shape_probe(self, model: ModelAdapter, target: Target) -> None:
        """The depth without data: speed and bytes depend on how many blocks remain, not on which."""
        n = self.block_count(model, target)
        depth = len(model.blocks)
        model.remove_blocks(range(depth - 1 - n, depth - 1))  # any n blocks will do; keep the last
