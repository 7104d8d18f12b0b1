"""Depth pruning (ShortGPT, SLEB): which blocks go, checked against direct computations."""

import dataclasses

import pytest
import torch
from conftest import logits_of, synthetic_calibration, tiny_model

from baselines.depth.shortgpt import ShortGPT
from baselines.depth.sleb import SLEB, losses_without
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.export import read_metadata, save_compressed
from harness.plugins import load_plugins
from harness.report.leaderboard import write_leaderboards
from harness.run import RunConfig, run
from harness.targets import count_parameters, measure_ratio


def make_identity(model, index):
    """Block ``index`` adds nothing to the residual stream: its output equals its input."""
    adapter = ModelAdapter(model)
    for role, linear in adapter.linears(adapter.blocks[index]).items():
        if role in ("o", "down"):
            linear.weight.data.zero_()
            if linear.bias is not None:
                linear.bias.data.zero_()


def hooked_influence(model, ids):
    """1 − mean cosine of each block's input and output, from hooks on a plain forward."""
    pairs = {}

    def keep(module, args, kwargs, out, i):
        pairs[i] = (kwargs.get("hidden_states", args[0] if args else None), out[0] if isinstance(out, tuple) else out)

    handles = [block.register_forward_hook(lambda m, a, k, o, i=i: keep(m, a, k, o, i), with_kwargs=True)
               for i, block in enumerate(ModelAdapter(model).blocks)]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return [1 - float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean())
            for x, y in (pairs[i] for i in sorted(pairs))]


def test_shortgpt_removes_the_blocks_of_lowest_influence(arch):
    model = tiny_model(arch, layers=6)
    make_identity(model, 3)
    calibration = synthetic_calibration(n=4, length=32, batch_size=4)
    expected = hooked_influence(model, calibration.input_ids)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    nonzeros = [sum(int(torch.count_nonzero(p)) for lin in adapter.linears(b).values() for p in lin.parameters())
                for b in adapter.blocks]
    report = ShortGPT().compress(adapter, calibration, Target(0.34))
    order = sorted(range(6), key=expected.__getitem__)
    assert expected[3] == pytest.approx(0.0, abs=1e-9) and order[0] == 3
    assert f"removed blocks {sorted(order[:2])}" in report.notes[0] and len(adapter.blocks) == 4
    assert [name for name, removed in report.layer_ratios.items() if removed == 1.0] == [
        f"layers.{i}" for i in sorted(order[:2])] and len(report.layer_ratios) == 6  # the allocation plot's bars
    # r counts nonzero weights: the identity block's zeroed projections were never counted
    share = sum(nonzeros[i] for i in order[:2]) / sum(nonzeros)
    assert measure_ratio(dense, adapter).ratio == pytest.approx(share)


def test_sleb_losses_equal_the_models_without_each_block():
    model = tiny_model("llama3", layers=5)
    calibration = synthetic_calibration(n=6, length=24, batch_size=4)
    adapter = ModelAdapter(model)
    loss = losses_without(adapter, calibration, alive=[0, 1, 2, 3, 4], candidates=[1, 2, 3])
    for j in (1, 2, 3):
        copy = tiny_model("llama3", layers=5)
        ModelAdapter(copy).remove_blocks([j])
        with torch.no_grad():
            logits = copy(calibration.input_ids).logits[:, :-1].float()
        direct = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   calibration.input_ids[:, 1:].reshape(-1), reduction="sum")
        assert loss[j] == pytest.approx(float(direct), rel=1e-5)


def test_sleb_removes_greedily_and_never_an_end_block():
    model = tiny_model("qwen2", layers=6)
    calibration = synthetic_calibration(n=4, length=24, batch_size=2)
    adapter = ModelAdapter(model)
    first = losses_without(adapter, calibration, list(range(6)), [1, 2, 3, 4])
    best = min(first, key=first.get)
    alive = [i for i in range(6) if i != best]
    second = losses_without(adapter, calibration, alive, alive[1:-1])  # scored on the model without the first
    report = SLEB().compress(adapter, calibration, Target(0.0, options={"blocks": 2}))
    removed = [int(part.split()[0]) for part in report.notes[0].split(": ", 1)[1].split(", ")]
    assert removed == [best, min(second, key=second.get)] and len(adapter.blocks) == 4
    assert {name for name, ratio in report.layer_ratios.items() if ratio == 1.0} == {f"layers.{i}" for i in removed}
    assert second != {j: first[j] for j in second}  # the second round saw the first removal


def test_a_ratio_between_steps_is_the_nearest_row_unranked(tiny_model_dir, data_dir, tmp_path):
    config = RunConfig(model=str(tiny_model_dir), methods=["dense", "shortgpt", "wanda"], ratios=[0.3],
                       calibration="wikitext2:4x32", eval_windows=2, eval_length=32, out=tmp_path / "results",
                       data_dir=str(data_dir), cache_dir=tmp_path / "cache")
    records = {r.method: r for r in run(config, load_plugins(), log=lambda *a: None)}
    assert records["shortgpt"].ok and records["shortgpt"].mode == "nearest-ratio"
    assert records["shortgpt"].achieved["ratio"] == pytest.approx(0.5)  # 1 of 2 blocks
    paths = write_leaderboards(config.out, tmp_path / "boards", registry=load_plugins(), plots=False)
    md = next(p for p in paths if p.suffix == ".md" and p.name != "index.md").read_text()
    row = next(line for line in md.splitlines() if "| shortgpt" in line)
    assert "0.3 (nearest)" in row and row.split("|")[1].strip() == "" and "nearest rows (not ranked)" in md
    assert "depth-pruned rows (shortgpt) too, with fewer layers" in md
    wanda = next(line for line in md.splitlines() if "| wanda" in line)
    assert wanda.split("|")[1].strip() == "1"
    exact = dataclasses.replace(config, methods=["shortgpt"], ratios=[0.5])
    (record,) = run(exact, load_plugins(), log=lambda *a: None)
    assert record.ok and record.mode == "matched-ratio"


def test_a_depth_pruned_export_is_a_stock_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("mistral", layers=4)
    ShortGPT().compress(ModelAdapter(model), synthetic_calibration(), Target(0.5))
    save_compressed(model, None, tmp_path / "export", {"method": "shortgpt"})
    assert read_metadata(tmp_path / "export")["loadable_by_transformers"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    assert plain.config.num_hidden_layers == 2
    torch.testing.assert_close(logits_of(plain), logits_of(model))


def test_a_matched_speedup_run_probes_only_whole_blocks(tiny_model_dir, data_dir, tmp_path):
    config = RunConfig(model=str(tiny_model_dir), methods=["dense", "shortgpt"], ratios=None,
                       match="speedup:1.2", match_phase="decode@1x16", calibration="wikitext2:4x32",
                       eval_windows=2, eval_length=32, out=tmp_path / "results", data_dir=str(data_dir),
                       cache_dir=tmp_path / "cache")
    record = {r.method: r for r in run(config, load_plugins(), log=lambda *a: None)}["shortgpt"]
    assert record.mode == "matched-speedup" and {p["ratio"] for p in record.match["probes"]} == {0.5}
    if record.ok:  # one of two blocks gone: whatever the CPU timed, the row is that step
        assert record.achieved["ratio"] == pytest.approx(0.5) and record.target["ratio"] == 0.5
    else:
        assert record.status == "unreachable"
