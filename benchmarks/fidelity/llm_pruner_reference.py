"""The reference side of the LLM-Pruner side-by-side: horseee/LLM-Pruner's own ``hf_prune.py``
(block-wise, Taylor ``param_first``, one iterative step, no LoRA recovery) on the side-by-side inputs,
SmolLM2-135M in float32 on the CPU, one torch thread.

It needs the reference's *edited* copy (``--reference-dir``, put first on ``sys.path``): as written,
``hf_prune.py`` runs only multi-head Llamas, reads its tokenizer and samples BookCorpus. The edits
(its grouped-query route, ``llama3.py``'s changes, copied; the gradient examples read from a fixed
``ids.pt``) and the results are in ``leaderboards/fidelity/llm_pruner_smollm2_cpu.md``. This script
stops if the examples the copy takes its gradient on are not ``--inputs``' first 10 calibration
windows cut to their first 64 tokens.

The copy's ``hf_prune.py`` runs as ``__main__`` with its own argument parser and the settings of
the repository's Llama-7B block-wise command scaled to 30 layers (blocks 4 to 27 pruned). What this
driver changes around it, in this process only:
- ``LlamaForCausalLM.from_pretrained`` returns the model ``reference_protocol.load_model`` loaded
  (float32, rotary base 100000 set explicitly; transformers 4.37 would read 10000 from the v5 config);
- ``LLMPruner.evaluator.ppl.PPLMetric`` (which downloads WikiText-2 and PTB) measures the side-by-side
  protocol instead, with --ppl, and nothing without;
- ``MetaPruner.__init__`` and ``step`` are timed, and with ``--scores`` every ``TaylorImportance``
  result is recorded (returned unchanged).
The kept query heads and MLP channels of every layer are read back by matching the pruned rows and
columns to the dense weights exactly, consistently across q, k, v, o and gate, up, down.

``--diag-aligned`` is a diagnostic, not the reference: in this process only, one line of
``TaylorImportance.__call__`` is replaced so that a KV group is scored by the query heads its
removal takes (3g .. 3g + 2 for group g of SmolLM2), not by the heads g, g + 3, g + 6 that the
reference's fold of the q/o scores onto k's channels sums.

    cd /work/main && OMP_NUM_THREADS=1 /tmp/depth-ref/venv/bin/python \\
        benchmarks/fidelity/llm_pruner_reference.py --reference-dir /tmp/llmpruner-ref/ref \\
        --inputs /tmp/fidelity-512 0.2 [--diag-aligned] --ppl --out ref_llm_pruner_0.2.json

Writes --out (JSON: settings, timings, ``heads_kept`` and ``mlp_kept`` per layer, parameter counts,
and with --ppl the perplexity of the first 16 test windows), with --scores the importances
(torch.save), and the reference's own log under ``--log-dir`` (default: --out's folder)
``/prune_log/``; prints the JSON, less the per-layer lists, on a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import runpy
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import torch
from reference_protocol import (
    TEST_WINDOWS,
    block_weight_counts,
    import_reference,
    load_model,
    perplexity,
)
from torch import nn

# The reference's gradient examples: --num_examples windows of 64 tokens (its BookCorpus sampler's length).
GRADIENT_WINDOWS = 10
GRADIENT_LENGTH = 64
# Its Llama-7B command prunes blocks 4 to 29 of 32; scaled to SmolLM2's 30: 4 to 27 (the end is exclusive).
FIRST_PRUNED, END_PRUNED = 4, 28
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
INPUT_SIDE = ("o_proj", "down_proj")  # pruned on their columns


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ratio", type=float, help="the reference's --pruning_ratio")
    parser.add_argument("--reference-dir", type=Path, required=True, help="the edited copy of the LLM-Pruner repository")
    parser.add_argument("--inputs", type=Path, required=True, help="side-by-side inputs: model/ and ids.pt")
    parser.add_argument("--diag-aligned", action="store_true",
                        help="diagnostic: score a KV group by the query heads its removal takes")
    parser.add_argument("--ppl", action="store_true", help="perplexity on the first 16 test windows")
    parser.add_argument("--scores", type=Path, help="also save every TaylorImportance result (torch.save)")
    parser.add_argument("--log-dir", type=Path, help="where the reference writes prune_log/ (default: --out's folder)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return parser.parse_args()


def hf_prune_argv(model_dir: Path, ratio: float, log_name: str) -> list[str]:
    """``hf_prune.py``'s command line: the README's block-wise Taylor setting on the CPU."""
    blocks = [str(FIRST_PRUNED), str(END_PRUNED)]
    return ["--base_model", str(model_dir), "--pruning_ratio", str(ratio), "--block_wise",
            "--block_mlp_layer_start", blocks[0], "--block_mlp_layer_end", blocks[1],
            "--block_attention_layer_start", blocks[0], "--block_attention_layer_end", blocks[1],
            "--pruner_type", "taylor", "--taylor", "param_first", "--iterative_steps", "1",
            "--num_examples", str(GRADIENT_WINDOWS), "--device", "cpu", "--eval_device", "cpu",
            "--save_ckpt_log_name", log_name]


def align_group_scores(pruner_module: ModuleType, head_dim: int) -> None:
    """The --diag-aligned diagnostic: fold the q/o scores of query heads (g·per .. g·per + per − 1)
    onto KV group g, the heads its removal takes, instead of the reference's heads g, g + G, ..."""
    cls = pruner_module.TaylorImportance
    source = textwrap.dedent(inspect.getsource(cls.__call__))
    old = "imp = imp.view(len(imp) // min_imp_size, min_imp_size).sum(0)"
    new = (f"imp = imp.view(min_imp_size // {head_dim}, len(imp) // min_imp_size, {head_dim})"
           ".sum(1).reshape(-1)")
    if source.count(old) != 1:
        sys.exit("TaylorImportance.__call__: the line --diag-aligned replaces was not found once")
    namespace = dict(vars(pruner_module))
    exec(source.replace(old, new).replace("@torch.no_grad()\n", ""), namespace)
    cls.__call__ = torch.no_grad()(namespace["__call__"])


def record_scores(pruner_module: ModuleType, graphs: list) -> list[tuple[str, torch.Tensor]]:
    """Wrap ``TaylorImportance.__call__`` to record (root module's name, importance) of each group."""
    scores: list[tuple[str, torch.Tensor]] = []
    original = pruner_module.TaylorImportance.__call__

    def recording_call(self, group, *args, **kwargs):
        importance = original(self, group, *args, **kwargs)
        root = group[0][0].target.module
        scores.append((graphs[-1]._module2name[root], importance.detach().clone()))
        return importance

    pruner_module.TaylorImportance.__call__ = recording_call
    return scores


def time_pruner(torch_pruning: ModuleType, timing: dict, graphs: list) -> None:
    """Time ``MetaPruner.__init__`` (the dependency graph) and ``step`` (the pruning); keep its graph."""
    meta_pruner = torch_pruning.pruner.MetaPruner
    original_init, original_step = meta_pruner.__init__, meta_pruner.step

    def init(self, *args, **kwargs):
        timing["start"] = time.perf_counter()
        original_init(self, *args, **kwargs)
        graphs.append(self.DG)
        timing["graph_built"] = time.perf_counter()

    def step(self, *args, **kwargs):
        original_step(self, *args, **kwargs)
        timing["step_end"] = time.perf_counter()

    meta_pruner.__init__, meta_pruner.step = init, step


def serve_model(model: nn.Module, model_dir: Path) -> None:
    """Make the reference's ``LlamaForCausalLM.from_pretrained(model_dir, ...)`` return ``model``."""
    from transformers import LlamaForCausalLM

    assert type(model) is LlamaForCausalLM, type(model)

    def from_pretrained(cls, path, **kwargs):
        assert Path(path) == model_dir and set(kwargs) <= {"low_cpu_mem_usage"}, (path, kwargs)
        return model

    LlamaForCausalLM.from_pretrained = classmethod(from_pretrained)


def check_gradient_examples(model: nn.Module, expected: torch.Tensor) -> None:
    """Stop unless every forward pass with labels (the gradient's) gets ``expected``."""
    original = model.forward

    def forward(input_ids=None, *args, labels=None, **kwargs):
        if labels is not None and not (torch.equal(input_ids, expected) and torch.equal(labels, expected)):
            sys.exit("the reference copy's gradient examples are not the first "
                     f"{GRADIENT_WINDOWS} calibration windows of --inputs cut to {GRADIENT_LENGTH} tokens")
        return original(input_ids, *args, labels=labels, **kwargs)

    model.forward = forward


def layer_linears(layer: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, linear) of a decoder layer's q, k, v, o, gate, up and down projections."""
    return ([(name, getattr(layer.self_attn, name)) for name in ATTENTION_LINEARS]
            + [(name, getattr(layer.mlp, name)) for name in MLP_LINEARS])


def match_rows(pruned: torch.Tensor, dense: torch.Tensor) -> list[int]:
    """The indices of the dense rows that the pruned rows equal exactly (pruning keeps the order)."""
    index = {dense[j].numpy().tobytes(): j for j in range(dense.shape[0])}
    return [index[pruned[r].numpy().tobytes()] for r in range(pruned.shape[0])]


def kept_units(model: nn.Module, dense: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Kept query heads and MLP channels of every layer of the pruned model, checked for
    consistency across q, k, v, o (a KV head kept exactly while a query head of its group is) and
    gate, up, down."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    per = config.num_attention_heads // config.num_key_value_heads
    heads_kept, mlp_kept = [], []
    for i, layer in enumerate(model.model.layers):
        kept = {name: match_rows(linear.weight.data.t(), dense[f"{i}.{name}"].t()) if name in INPUT_SIDE
                else match_rows(linear.weight.data, dense[f"{i}.{name}"]) for name, linear in layer_linears(layer)}
        q = kept["q_proj"]
        heads = sorted({r // head_dim for r in q})
        assert q == [h * head_dim + c for h in heads for c in range(head_dim)], i
        groups = sorted({r // head_dim for r in kept["k_proj"]})
        assert kept["k_proj"] == kept["v_proj"] == [g * head_dim + c for g in groups for c in range(head_dim)], i
        assert groups == sorted({h // per for h in heads}), (i, heads, groups)
        assert kept["o_proj"] == q, i
        channels = kept["gate_proj"]
        assert kept["up_proj"] == kept["down_proj"] == channels, i
        heads_kept.append(heads)
        mlp_kept.append(channels)
    return heads_kept, mlp_kept


def main() -> None:
    cli = parse_args()
    torch.set_num_threads(1)
    reference_dir, inputs, out_path = cli.reference_dir.resolve(), cli.inputs.resolve(), cli.out.resolve()
    log_dir = (cli.log_dir or cli.out.parent).resolve()
    scores_path = cli.scores and cli.scores.resolve()
    model_dir = inputs / "model"
    ids = torch.load(inputs / "ids.pt")
    test_ids = ids["test"][:TEST_WINDOWS]

    torch_pruning = import_reference(reference_dir, "LLMPruner.torch_pruning")
    pruner_module = import_reference(reference_dir, "LLMPruner.pruner.hf_llama_pruner")
    ppl_module = import_reference(reference_dir, "LLMPruner.evaluator.ppl")
    model = load_model(model_dir)
    config = model.config
    if cli.diag_aligned:
        align_group_scores(pruner_module, config.hidden_size // config.num_attention_heads)
    timing: dict[str, float] = {}
    graphs: list = []
    time_pruner(torch_pruning, timing, graphs)
    scores = record_scores(pruner_module, graphs) if scores_path else None
    dense = {f"{i}.{name}": linear.weight.detach().clone()
             for i, layer in enumerate(model.model.layers) for name, linear in layer_linears(layer)}
    dense_numel = sum(p.numel() for p in model.parameters())
    serve_model(model, model_dir)
    check_gradient_examples(model, ids["calibration"][:GRADIENT_WINDOWS, :GRADIENT_LENGTH])
    measured: dict[str, float] = {}

    def protocol_perplexity(pruned, tokenizer, datasets, seq_len=128, batch_size=4, device="cuda"):
        """Stand-in for the reference's ``PPLMetric``: the side-by-side protocol, with --ppl."""
        if not cli.ppl:
            return {}
        pruned.eval()
        start = time.perf_counter()
        measured["ppl"], measured["nll_sum"] = perplexity(pruned, test_ids)
        measured["eval_s"] = time.perf_counter() - start
        return {"side-by-side": measured["ppl"]}

    ppl_module.PPLMetric = protocol_perplexity
    log_name = f"llm_pruner_{cli.ratio}" + ("_diag_aligned" if cli.diag_aligned else "")
    argv = hf_prune_argv(model_dir, cli.ratio, log_name)
    log_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(log_dir)  # hf_prune.py writes prune_log/ in the working directory
    sys.argv = [str(reference_dir / "hf_prune.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")

    heads_kept, mlp_kept = kept_units(model, dense)
    out = {"method": "llm-pruner", "ratio": cli.ratio, "diag_aligned": cli.diag_aligned, "hf_prune_argv": argv,
           "gradient_windows": GRADIENT_WINDOWS, "gradient_length": GRADIENT_LENGTH,
           "prune_s": timing["step_end"] - timing["start"], "graph_s": timing["graph_built"] - timing["start"],
           "backward_and_step_s": timing["step_end"] - timing["graph_built"],
           "heads_kept": heads_kept, "mlp_kept": mlp_kept,
           "numel_dense": dense_numel, "numel_after": sum(p.numel() for p in model.parameters()),
           **block_weight_counts(config, heads_kept, mlp_kept), **measured}
    if scores is not None:
        torch.save(scores, scores_path)
    summary = {key: value for key, value in out.items() if key not in ("heads_kept", "mlp_kept")}
    print("RESULT", json.dumps(summary), flush=True)
    out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
