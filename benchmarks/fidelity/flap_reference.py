"""The reference side of the FLAP / Wanda-sp side-by-side: CASIA-IVA-Lab/FLAP's own pruning code
on the side-by-side inputs, SmolLM2-135M in float32 on the CPU, one torch thread.

It needs the reference's *edited* copy (``--reference-dir``, put first on ``sys.path``): the
pristine repository runs only on CUDA, assumes one KV head per query head of size 128 and
downloads its calibration data. The edits, and the results, are in
``leaderboards/fidelity/flap_smollm2_cpu_8x512.md``. The copy's data loaders read the calibration
windows from a fixed ``ids.pt``; this script stops if they are not ``--inputs``' first 8 windows.

This driver stands in for the repository's ``main.py``: the model is loaded with transformers'
``LlamaForCausalLM`` (grouped-query attention, rotary base set to 100000 explicitly), zero biases
are put on every o_proj and down_proj as ``main.py``'s model loader does, and ``prune_flap``
(metric WIFV, structure AL-AM) or ``prune_wanda_sp`` runs in the masking mode (``unstr``). The
kept query heads and MLP channels of every layer are recorded by wrapping ``lib.prune.compress``,
which then runs unchanged; parameters are counted as for the really-pruned model.

``--exact-variance`` is a diagnostic, not the reference: in this process only, the input
statistics class's ``add_batch`` is replaced by the exact mean and sample variance over all
calibration tokens (float64 sums), to measure what the reference's running estimate changes.

    cd /work/main && OMP_NUM_THREADS=1 /tmp/depth-ref/venv/bin/python \\
        benchmarks/fidelity/flap_reference.py --reference-dir /tmp/flap-ref/flap \\
        --inputs /tmp/fidelity-512 flap 0.2 [--exact-variance] --ppl --out ref_flap_0.2.json

Writes --out (JSON: settings, timings, ``heads_kept`` and ``mlp_kept`` per layer, parameter
counts, and with --ppl the perplexity of the first 16 test windows) and prints it, less the
per-layer lists, on a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from reference_protocol import (
    CALIBRATION_LENGTH,
    CALIBRATION_WINDOWS,
    SEED,
    TEST_WINDOWS,
    block_weight_counts,
    import_reference,
    load_model,
    perplexity,
)
from torch import nn


@dataclass(frozen=True)
class ModelShape:
    """The sizes the whole-model count and the head check need, from the model's config."""

    layers: int
    heads: int
    hidden: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["flap", "wanda_sp"])
    parser.add_argument("ratio", type=float, help="pruning ratio passed to the reference")
    parser.add_argument("--reference-dir", type=Path, required=True, help="the edited copy of the FLAP repository")
    parser.add_argument("--inputs", type=Path, required=True, help="side-by-side inputs: model/ and ids.pt")
    parser.add_argument("--exact-variance", action="store_true",
                        help="diagnostic: exact sample variance in place of the reference's running estimate")
    parser.add_argument("--ppl", action="store_true", help="perplexity on the first 16 test windows")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return parser.parse_args()


def exact_variance_add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
    """Stand-in for the reference's ``BiasGPT.add_batch``: exact running sums over every token
    seen so far, giving the mean and the unbiased variance of each input channel."""
    tokens = inp.reshape(-1, inp.shape[-1]).double()
    if not hasattr(self, "_token_sum"):
        self._token_sum = torch.zeros(tokens.shape[1], dtype=torch.float64)
        self._token_square_sum = torch.zeros_like(self._token_sum)
        self._token_count = 0
    self._token_sum += tokens.sum(0)
    self._token_square_sum += (tokens * tokens).sum(0)
    self._token_count += tokens.shape[0]
    mean = self._token_sum / self._token_count
    self.baseline_inp = mean.float()
    self.fluc_inp = ((self._token_square_sum - self._token_count * mean * mean) / (self._token_count - 1)).float()
    self.nsamples += inp.shape[0] if inp.dim() == 3 else 1


def check_reference_calibration(reference_dir: Path, method: str, calibration_ids: torch.Tensor) -> None:
    """Stop unless the copy's loader (wikitext2 for FLAP, c4 for Wanda-sp) yields ``calibration_ids``."""
    data = import_reference(reference_dir, "lib.data")
    loader_name = "wikitext2" if method == "flap" else "c4"
    loader, _ = data.get_loaders(loader_name, nsamples=len(calibration_ids), seed=SEED,
                                 seqlen=CALIBRATION_LENGTH, tokenizer=None)
    reference_ids = torch.cat([inp for inp, _ in loader])
    if not torch.equal(reference_ids, calibration_ids):
        sys.exit(f"{reference_dir}/lib/data.py does not return the calibration windows of --inputs")


def reference_args(method: str, ratio: float, model_dir: Path) -> argparse.Namespace:
    """The reference's command-line settings: its README's LLaMA run, 8 calibration windows, masking."""
    args = argparse.Namespace(model=str(model_dir), seed=SEED, nsamples=CALIBRATION_WINDOWS, pruning_ratio=ratio,
                              remove_heads=-1, metrics="WIFV", structure="AL-AM", prune_method=method,
                              cache_dir=None, unstr=True, eval=False, save_model=None)
    if method == "wanda_sp":
        args.metrics, args.structure = "N/A", "N/A"  # as the repository's LLaMA script; unused by Wanda-sp
    return args


def model_shape(config) -> ModelShape:
    return ModelShape(config.num_hidden_layers, config.num_attention_heads, config.hidden_size, config.vocab_size)


def add_zero_output_biases(model: nn.Module, hidden: int) -> None:
    """Zero biases on every o_proj and down_proj, as the reference's model loader has them."""
    for layer in model.model.layers:
        layer.self_attn.o_proj.bias = nn.Parameter(torch.zeros(hidden))
        layer.mlp.down_proj.bias = nn.Parameter(torch.zeros(hidden))


def record_kept_units(prune_module: ModuleType, model: nn.Module) -> tuple[dict, dict]:
    """Wrap the reference's ``compress`` to record the kept query heads and MLP channels per layer
    (the indices its masks keep); the original is then called unchanged."""
    layer_index = {id(layer): index for index, layer in enumerate(model.model.layers)}
    heads_kept: dict[int, list[int]] = {}
    mlp_kept: dict[int, list[int]] = {}
    original_compress = prune_module.compress

    def recording_compress(layer, attn_mask, mlp_mask, *args, **kwargs):
        index = layer_index[id(layer)]
        if attn_mask is not None:
            heads_kept[index] = torch.where(attn_mask.cpu())[0].tolist()
        if mlp_mask is not None:
            mlp_kept[index] = torch.where(mlp_mask.cpu())[0].tolist()
        return original_compress(layer, attn_mask, mlp_mask, *args, **kwargs)

    prune_module.compress = recording_compress
    return heads_kept, mlp_kept


def run_reference_pruning(prune_module: ModuleType, args: argparse.Namespace, model: nn.Module) -> float:
    """Prune with the reference's function for ``args.prune_method``; returns the seconds taken."""
    prune = prune_module.prune_flap if args.prune_method == "flap" else prune_module.prune_wanda_sp
    start = time.time()
    prune(args, model, None, torch.device("cpu"))
    seconds = time.time() - start
    print("prune time", seconds, flush=True)
    return seconds


def parameter_counts(config, shape: ModelShape, heads_kept: list[list[int]], mlp_kept: list[list[int]],
                     dense_params: int) -> dict:
    """Counts for the really-pruned equivalent of the masked model (``dense_params``: the dense
    model's, zero biases included)."""
    blocks = block_weight_counts(config, heads_kept, mlp_kept)
    biases_and_norms = shape.layers * 4 * shape.hidden  # o/down biases and the two norms of each block
    embedding_and_final_norm = shape.vocab * shape.hidden + shape.hidden  # the head is tied
    return {"params_after_incl_zero_biases_as_main_py":
            blocks["block_linear_weights_after"] + biases_and_norms + embedding_and_final_norm,
            "dense_params_with_zero_biases": dense_params, **blocks}


def check_masked_heads(model: nn.Module, shape: ModelShape, heads_kept: list[list[int]]) -> None:
    """The nonzero q_proj rows present in the model must be the recorded kept heads."""
    present = [int((layer.self_attn.q_proj.weight.abs().sum(1) != 0).sum()) // shape.head_dim
               for layer in model.model.layers]
    assert present == [len(heads) for heads in heads_kept], (present,)


def main() -> None:
    cli = parse_args()
    torch.set_num_threads(1)
    model_dir = cli.inputs / "model"
    ids = torch.load(cli.inputs / "ids.pt")
    check_reference_calibration(cli.reference_dir, cli.method, ids["calibration"][:CALIBRATION_WINDOWS])
    if cli.exact_variance:
        import_reference(cli.reference_dir, "lib.layerwrapper").BiasGPT.add_batch = exact_variance_add_batch
    prune_module = import_reference(cli.reference_dir, "lib.prune")
    args = reference_args(cli.method, cli.ratio, model_dir)
    np.random.seed(SEED)
    torch.random.manual_seed(SEED)

    model = load_model(model_dir)
    shape = model_shape(model.config)
    add_zero_output_biases(model, shape.hidden)
    dense_params = sum(p.numel() for p in model.parameters())
    heads_by_layer, mlp_by_layer = record_kept_units(prune_module, model)
    prune_seconds = run_reference_pruning(prune_module, args, model)
    heads_kept = [heads_by_layer[i] for i in range(shape.layers)]
    mlp_kept = [mlp_by_layer[i] for i in range(shape.layers)]

    out = {"method": cli.method, "ratio": cli.ratio, "exact_variance": cli.exact_variance,
           "prune_s": prune_seconds, "heads_kept": heads_kept, "mlp_kept": mlp_kept,
           **parameter_counts(model.config, shape, heads_kept, mlp_kept, dense_params)}
    check_masked_heads(model, shape, heads_kept)
    if cli.ppl:
        start = time.time()
        out["ppl"], out["nll_sum"] = perplexity(model, ids["test"][:TEST_WINDOWS])
        out["eval_s"] = time.time() - start
    summary = {key: value for key, value in out.items() if key not in ("heads_kept", "mlp_kept")}
    print("RESULT", json.dumps(summary), flush=True)
    cli.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
