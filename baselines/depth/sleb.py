"""SLEB: remove blocks one at a time, each time the one whose absence costs the least calibration loss.

Paper: "SLEB: Streamlining LLMs through Redundancy Verification and Elimination of Transformer
Blocks" (Song et al., ICML 2024). Reference code: jiwonsong-dev/SLEB (``sleb.py``: ``sleb``,
``get_loss``).

Each round, for every candidate block j still in the model, the model without j (its residual
stream passed on unchanged) is run on the calibration windows; the block whose absence gives
the lowest next-token loss is removed for good, and the next round scores the model without it
(the paper's metric 3, the reference's only one). N rounds remove N blocks.

From the reference: the loss is the summed next-token cross-entropy over the calibration
windows (the reference sums each 2048-token window's mean, the same ranking: every window has
one length); the first and last remaining blocks are never candidates (its ``early_barrier`` and
``latter_barrier``, 1 each: knob ``protect``); ties go to the earlier block. Ours: the windows
are the harness's shared calibration set (the reference joins 128 shuffled WikiText-2 training
lines into one token stream cut into 2048-token windows); the search runs block by block,
each calibration batch carried through every block once per round with one stream per
candidate forked where the candidate is skipped, so one block at a time is on the device.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from harness.calibration import capture_block_inputs, run_block
from harness.method import CompressionReport, Knob

from .blocks import DepthPruning


@torch.no_grad()
def losses_without(model, calibration, alive: list[int], candidates: list[int]) -> dict[int, float]:
    """For each candidate block, the summed next-token negative log-likelihood of the calibration
    windows through the ``alive`` blocks without it."""
    device = calibration.device
    hidden, kwargs = capture_block_inputs(model, calibration.input_ids, device, calibration.batch_size)
    windows = calibration.input_ids.split(calibration.batch_size)
    loss = dict.fromkeys(candidates, 0.0)
    head = [model.final_norm, model.lm_head]
    for b, (h0, ids) in enumerate(zip(hidden, windows)):
        streams: dict[int | None, torch.Tensor] = {None: h0}  # None: no block skipped (yet)
        for i in alive:
            block = model.blocks[i].to(device)
            forked = streams.pop(None) if i in candidates else None
            streams = {key: run_block(block, [h], [kwargs[i][b]])[0] for key, h in streams.items()}
            if forked is not None:
                if i != candidates[-1]:
                    streams[None] = run_block(block, [forked], [kwargs[i][b]])[0]
                streams[i] = forked  # the stream without block i
            block.to("cpu")
        for m in head:
            m.to(device)
        targets = ids.to(device)[:, 1:]
        for key, h in streams.items():
            for row in range(h.shape[0]):  # one window's logits at a time
                logits = model.logits(h[row:row + 1])[0, :-1].float()
                loss[key] += float(F.cross_entropy(logits, targets[row], reduction="sum"))
        for m in head:
            m.to("cpu")
    return loss


class SLEB(DepthPruning):
    name = "sleb"
    description = "removes blocks one at a time by the calibration loss without each (Song et al. 2024)"
    knobs = {**DepthPruning.knobs,
             "protect": Knob(int, 1, "blocks at each end of the remaining stack never removed (the reference's barriers)")}

    def compress(self, model, calibration, target):
        n = self.block_count(model, target)
        protect = self.option(target, "protect")
        alive = list(range(len(model.blocks)))
        removed, rounds = [], []
        start = time.perf_counter()
        for _ in range(n):
            candidates = alive[protect:len(alive) - protect]
            if not candidates:
                raise ValueError(f"sleb: no block left to remove after {len(removed)} with protect={protect}")
            loss = losses_without(model, calibration, alive, candidates)
            best = min(candidates, key=lambda j: (loss[j], j))
            removed.append(best)
            alive.remove(best)
            rounds.append(f"{best} ({loss[best] / calibration.input_ids[:, 1:].numel():.4f})")
        depth = len(model.blocks)
        model.remove_blocks(removed)
        report = CompressionReport(knobs={"blocks": n, "protect": protect}, layer_ratios=self.allocation(depth, removed),
                                   timings={"search_s": time.perf_counter() - start})
        report.notes.append("removed in order (mean calibration NLL without it): " + ", ".join(rounds))
        return report
