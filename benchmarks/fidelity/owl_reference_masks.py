"""The reference side of the OWL mask comparison: luuyin/OWL's ``prune_wanda_outlier`` (OWL over
Wanda, unstructured) on the side-by-side inputs, SmolLM2-135M in float32 on the CPU, one torch
thread, with everything needed to compare its masks with ours recorded.

It needs the reference's *edited* copy (``--reference-dir``, put first on ``sys.path``): the
pristine repository downloads C4 for calibration and fixes the calibration length at 2048. The
edits, the comparison and the results are in ``leaderboards/fidelity/owl_ria_smollm2_cpu_8x512.md``
(our side: ``benchmarks/fidelity/owl_variants.py``). The copy's C4 loader reads the calibration
windows from a fixed ``ids.pt``; this script stops if they are not ``--inputs``' first 8 windows.

Recording only, the pruning code runs unchanged: the copy's ``WrappedGPT`` is replaced in
``lib.prune_all`` by a subclass that keeps every instance (its ``scaler_row`` and ``nsamples``,
both passes), ``check_outlier_mean`` by a wrapper that keeps what it returns (the per-layer outlier
ratios), and with ``--save-block-inputs`` forward pre-hooks keep every block's inputs.

    cd /work/main && OMP_NUM_THREADS=1 /tmp/depth-ref/venv/bin/python \\
        benchmarks/fidelity/owl_reference_masks.py --reference-dir /tmp/owlria-ref/owl \\
        --inputs /tmp/fidelity-512 --ratio 0.5 --out-dir /tmp/owl-diag [--ppl] [--save-block-inputs]

Writes to --out-dir:
  ref_RATIO.pt         masks (weights zero after pruning that were not zero before), per
                       ``"BLOCK.MODULE"``; stats ``"PASS.BLOCK.MODULE"`` -> (scaler_row, nsamples);
                       dense_zeros (weights zero before pruning); meta (as the JSON)
  ref_RATIO.json       outlier ratios, the layer sparsities derived from them, and with --ppl the
                       perplexity of the first 16 test windows
  ref_inputs_RATIO.pt  with --save-block-inputs: each block's inputs in the statistics loop of
                       each pass (about 570 MB at 8 x 512)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from reference_protocol import (
    CALIBRATION_LENGTH,
    CALIBRATION_WINDOWS,
    SEED,
    TEST_WINDOWS,
    import_reference,
    load_model,
    perplexity,
)
from torch import nn

LAMBDA = 0.08  # OWL's sparsity spread
OUTLIER_M = 5.0  # OWL's outlier threshold, a multiple of the layer's mean score
BLOCK_CALLS_PER_LOOP = CALIBRATION_WINDOWS  # the reference forwards the calibration windows one at a time
LOOPS_PER_PASS = 2  # statistics forward, then output forward
PASSES = 2  # outlier ratios, then pruning


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", type=Path, required=True, help="the edited copy of the OWL repository")
    parser.add_argument("--inputs", type=Path, required=True, help="side-by-side inputs: model/ and ids.pt")
    parser.add_argument("--ratio", type=float, default=0.5, help="target sparsity")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--ppl", action="store_true", help="perplexity on the first 16 test windows")
    parser.add_argument("--save-block-inputs", action="store_true", help="also write ref_inputs_RATIO.pt")
    return parser.parse_args()


def check_reference_calibration(reference_dir: Path, calibration_ids: torch.Tensor) -> None:
    """Stop unless the copy's C4 loader yields ``calibration_ids``."""
    data = import_reference(reference_dir, "lib.data")
    loader, _ = data.get_loaders("c4", nsamples=len(calibration_ids), seed=SEED,
                                 seqlen=CALIBRATION_LENGTH, tokenizer=None)
    if not torch.equal(torch.cat([inp for inp, _ in loader]), calibration_ids):
        sys.exit(f"{reference_dir}/lib/data.py does not return the calibration windows of --inputs")


def reference_args(ratio: float, model_dir: Path) -> argparse.Namespace:
    """The reference's settings for OWL over Wanda; ``model`` only selects its LLaMA code path."""
    if "opt" in str(model_dir):
        sys.exit(f"{model_dir}: the reference would take its OPT code path for a name containing 'opt'")
    return argparse.Namespace(model=str(model_dir), seed=SEED, nsamples=CALIBRATION_WINDOWS, sparsity_ratio=ratio,
                              sparsity_type="unstructured", prune_method="wanda_owl", use_variant=False,
                              Lamda=LAMBDA, Hyper_m=OUTLIER_M, outlier_by_activation=False, outlier_by_wmetric=False)


def zero_weights(prune_all: ModuleType, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
    """Where every linear's weight is zero now, per ``"BLOCK.MODULE"``."""
    return {f"{index}.{name}": (linear.weight.data == 0).clone()
            for index, layer in enumerate(layers) for name, linear in prune_all.find_layers(layer).items()}


def record_statistics(prune_all: ModuleType) -> tuple[list, list]:
    """Swap in recording versions of the statistics wrapper and the outlier-ratio function; returns
    the lists they fill (wrapper instances in creation order, outlier ratios in call order)."""
    wrappers, outlier_ratios = [], []
    base = prune_all.WrappedGPT

    class RecordingWrappedGPT(base):
        def __init__(self, layer, *args, **kwargs):
            super().__init__(layer, *args, **kwargs)
            wrappers.append(self)

    original_outlier_ratio = prune_all.check_outlier_mean

    def recording_outlier_ratio(mask, threshold):
        ratio = original_outlier_ratio(mask, threshold)
        outlier_ratios.append(ratio)
        return ratio

    prune_all.WrappedGPT = RecordingWrappedGPT
    prune_all.check_outlier_mean = recording_outlier_ratio
    return wrappers, outlier_ratios


def record_block_inputs(layers: nn.ModuleList) -> tuple[list, dict[int, list[torch.Tensor]]]:
    """Forward pre-hooks keeping the hidden states every block is called with; returns the hook
    handles and the per-block lists they fill."""
    block_inputs: dict[int, list[torch.Tensor]] = {}

    def hook_for(index: int):
        def keep_input(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            block_inputs.setdefault(index, []).append(hidden.detach().clone())
        return keep_input

    handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    return handles, block_inputs


def statistics_by_linear(wrappers: list, module_names: list[str], num_layers: int) -> dict[str, tuple]:
    """(scaler_row, nsamples) per ``"PASS.BLOCK.MODULE"``: the wrappers come block by block, in the
    order of ``find_layers``, first for the outlier pass, then for the pruning pass."""
    per_pass = num_layers * len(module_names)
    assert len(wrappers) == PASSES * per_pass, len(wrappers)
    statistics = {}
    for pass_name, offset in (("pass1", 0), ("pass2", per_pass)):
        for block in range(num_layers):
            for position, name in enumerate(module_names):
                wrapper = wrappers[offset + block * len(module_names) + position]
                statistics[f"{pass_name}.{block}.{name}"] = (wrapper.scaler_row.clone(), wrapper.nsamples)
    return statistics


def new_zeros(prune_all: ModuleType, layers: nn.ModuleList, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks: weights zero after pruning that were not zero before."""
    after = zero_weights(prune_all, layers)
    return {key: after[key] & ~before[key] for key in after}


def statistics_loop_inputs(block_inputs: dict[int, list[torch.Tensor]]) -> dict[int, dict[str, torch.Tensor]]:
    """Each block's inputs in the statistics loop of each pass (the first of its two loops)."""
    calls_per_pass = LOOPS_PER_PASS * BLOCK_CALLS_PER_LOOP
    inputs = {}
    for block, calls in block_inputs.items():
        assert len(calls) == PASSES * calls_per_pass, (block, len(calls))
        inputs[block] = {"pass1": torch.cat(calls[:BLOCK_CALLS_PER_LOOP]),
                         "pass2": torch.cat(calls[calls_per_pass:calls_per_pass + BLOCK_CALLS_PER_LOOP])}
    return inputs


def layer_sparsities(outlier_ratios: list[float], ratio: float) -> list[float]:
    """OWL's allocation: outlier ratios min-max scaled to [0, 2λ], centred on 1 − ratio (the kept
    share), as the reference computes it; returns the sparsity of each layer."""
    scores = np.array(outlier_ratios)
    scores = (scores - scores.min()) * (1 / (scores.max() - scores.min()) * LAMBDA * 2)
    kept = scores - np.mean(scores) + (1 - ratio)
    return [float(1 - share) for share in kept]


def main() -> None:
    cli = parse_args()
    torch.set_num_threads(1)
    model_dir = cli.inputs / "model"
    ids = torch.load(cli.inputs / "ids.pt")
    check_reference_calibration(cli.reference_dir, ids["calibration"][:CALIBRATION_WINDOWS])
    prune_all = import_reference(cli.reference_dir, "lib.prune_all")
    args = reference_args(cli.ratio, model_dir)
    np.random.seed(SEED)
    torch.random.manual_seed(SEED)

    model = load_model(model_dir, device_map="cpu")
    layers = model.model.layers
    before = zero_weights(prune_all, layers)
    wrappers, outlier_ratios = record_statistics(prune_all)
    handles, block_inputs = record_block_inputs(layers) if cli.save_block_inputs else ([], {})
    start = time.time()
    prune_all.prune_wanda_outlier(args, model, None, torch.device("cpu"), prune_n=0, prune_m=0)
    print("prune time", time.time() - start, flush=True)
    for handle in handles:
        handle.remove()

    module_names = list(prune_all.find_layers(layers[0]).keys())
    statistics = statistics_by_linear(wrappers, module_names, len(layers))
    masks = new_zeros(prune_all, layers, before)
    out = {"outlier_ratios": outlier_ratios, "sparsities": layer_sparsities(outlier_ratios, cli.ratio)}
    cli.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"masks": masks, "stats": statistics, "dense_zeros": before, "meta": out},
               cli.out_dir / f"ref_{cli.ratio}.pt")
    if cli.save_block_inputs:
        torch.save(statistics_loop_inputs(block_inputs), cli.out_dir / f"ref_inputs_{cli.ratio}.pt")
    if cli.ppl:
        out["ppl"], out["nll_sum"] = perplexity(model, ids["test"][:TEST_WINDOWS])
    print("RESULT", json.dumps(out))
    (cli.out_dir / f"ref_{cli.ratio}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
