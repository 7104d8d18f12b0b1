"""Perplexity with the papers' protocol (SparseGPT, Wanda, SliceGPT).

The test split, joined as the dataset defines (WikiText-2: "\\n\\n"), is tokenised once and
cut into non-overlapping windows of L tokens (the tail that does not fill a window is
dropped). Perplexity = exp(mean NLL over every predicted token of every window).

The BOS token (``--bos``, ``harness.calibration.BOS_MODES``) is part of the protocol and
recorded: by default the tokenizer's own special tokens on the joined text, as the
references tokenise it (one BOS opens the stream, where the tokenizer adds one); ``window``
puts one before every window of L − 1 text tokens, as lm-eval's rolling windows do, so every
text token is predicted.

The model runs block by block through the same driver as calibration, so evaluating a
70B model needs one block on the GPU at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.calibration import bos_id, bos_placement, load_or_make, prefixed, sequential, tokenize
from harness.evaluation import EvalContext, EvalResult, Evaluator, Prepared, cache_path
from harness.models.adapters import ModelAdapter
from harness.targets import Target

BOS_WORDS = {"stream": "one BOS opening the stream", "window": "a BOS before every window", "none": "no BOS"}


@dataclass
class PerplexityResult:
    perplexity: float
    windows: int  # windows evaluated
    windows_total: int  # windows the full protocol evaluates
    window_length: int
    tokens: int  # predicted tokens

    @property
    def subsampled(self) -> bool:
        return self.windows < self.windows_total


def eval_windows(token_ids: torch.Tensor, length: int, limit: int | None = None,
                 cap: int | None = None) -> tuple[torch.Tensor, int]:
    """(windows to evaluate, windows in the full protocol)."""
    total = token_ids.numel() // length
    if cap is not None:
        total = min(total, cap)
    if total == 0:
        raise ValueError(f"evaluation text has {token_ids.numel()} tokens, fewer than one window of {length}")
    n = total if limit is None else min(limit, total)
    return token_ids[: n * length].view(n, length), total


@torch.no_grad()
def perplexity(model: ModelAdapter, windows: torch.Tensor, device: torch.device | str,
               batch_size: int = 4, windows_total: int | None = None) -> PerplexityResult:
    device = torch.device(device)
    steps = sequential(model, windows, device, batch_size, desc="perplexity")
    *_, last = steps  # run every block; the last step holds the final hidden states
    head = [model.final_norm, model.lm_head]
    for m in head:
        m.to(device)
    nll, count = 0.0, 0
    try:
        rows = [row for batch in last.outputs for row in batch]  # one window at a time:
        for hidden, ids in zip(rows, windows):  # full-vocabulary logits are large
            logits = model.logits(hidden[None]).float()[0]
            target = ids.to(device)
            nll += F.cross_entropy(logits[:-1], target[1:], reduction="sum").item()
            count += target.numel() - 1
    finally:
        for m in head:
            m.to("cpu")
    length = windows.shape[1]
    return PerplexityResult(math.exp(nll / count), windows.shape[0],
                            windows_total or windows.shape[0], length, count)


class Perplexity(Evaluator):
    """``ppl:DATASET[,DATASET...]``: perplexity on each dataset's test split, block by block."""

    name = "ppl"
    description = "perplexity, the papers' protocol (non-overlapping windows of the model's context)"

    def higher_is_better(self, metric: str) -> bool:
        return False

    def describe(self, key: str, spec: dict, details: dict | None = None) -> str:
        return (f"{key}: {spec['windows']}/{spec['windows_total']} windows × {spec['window_length']}"
                + (" (subsampled)" if spec["windows"] < spec["windows_total"] else "")
                + f", {BOS_WORDS[spec.get('bos', 'none')]}")

    def check(self, args: list[str], dataset) -> None:
        for name in args:
            dataset(name)

    def prepare(self, args: list[str], context: EvalContext) -> Prepared:
        config = context.config
        length = config.eval_length or context.context_length
        bos = bos_placement(context.tokenizer(), config.bos)
        spec, windows_by_dataset = {}, {}
        for name in args:
            dataset = context.dataset(name)
            # resolved before the cache: the cache is keyed on the file's content
            source = dataset.locate("test", config.data_dir)

            def make(dataset=dataset, source=source):
                return {"token_ids": tokenize(context.tokenizer(), dataset.read(source), bos)}

            key = (context.model_fingerprint, source.identity) + ((bos,) if bos == "stream" else ())
            tokens = load_or_make(cache_path(context), "eval", key, make)
            if bos == "window":  # L − 1 text tokens after each BOS
                windows, total = eval_windows(tokens["token_ids"], length - 1, config.eval_windows, dataset.max_eval_windows)
                windows = prefixed(windows, bos_id(context.tokenizer()))
            else:
                windows, total = eval_windows(tokens["token_ids"], length, config.eval_windows, dataset.max_eval_windows)
            windows_by_dataset[name] = (windows, total)
            spec[f"ppl:{name}"] = {"windows": windows.shape[0], "windows_total": total,
                                   "window_length": length, "bos": bos, **source.describe()}
        return Prepared(spec, windows_by_dataset)

    def evaluate(self, prepared: Prepared, model: ModelAdapter, target: Target,
                 context: EvalContext) -> EvalResult:
        return EvalResult({f"ppl:{name}": perplexity(model, windows, context.device, context.config.batch_size,
                                                     total).perplexity
                           for name, (windows, total) in prepared.state.items()})


@hookimpl
def register_evaluations(register):
    register(Perplexity())
