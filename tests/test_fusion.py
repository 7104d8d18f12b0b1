"""Serving-time fusion of shared-input linears (harness/fusion.py): the fused step computes
what the model computes, one product per group per step, leaves no state behind that would
make torch.compile recompile, and is undone exactly."""

import pytest
import torch
from conftest import synthetic_calibration, tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.plugins import default_registry
from harness.serving.config import ServingConfig
from harness.serving.fusion import (
    FusedMember,
    FusionError,
    SharedInputGroup,
    check_one_product_per_step,
    fused_groups,
    fused_projections,
)
from harness.serving.step import ServingStep, SpeedSpec, weight_bytes
from harness.serving.timing import measure_model

CPU = torch.device("cpu")


def step_outputs(adapter):
    return [ServingStep.for_spec(adapter, SpeedSpec.parse(s), CPU)() for s in ("prefill@2x10", "decode@2x12")]


def check_fused_equals_unfused(model, groups_per_block):
    adapter = ModelAdapter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference, nbytes = step_outputs(adapter), weight_bytes(model)
    with fused_projections(adapter) as groups:
        assert len(groups) == groups_per_block * len(adapter.blocks)
        assert weight_bytes(model) == nbytes  # the stacked weights replace the parts, not add to them
        fused = step_outputs(adapter)
        assert check_one_product_per_step(model, steps=3) == len(groups)  # prefill 1 + decode prompt 1 + step 1
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not fused_groups(model) and not any(isinstance(m, FusedMember) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("arch, groups_per_block", [
    ("llama3", 2), ("qwen2", 2), ("mistral", 2), ("gemma2", 2), ("gemma3", 2),
    ("phi2", 1),  # q, k, v and fc1 read one LayerNorm output: one group of four
    ("phi3", 0),  # already stores qkv and gate_up fused
])
def test_fused_step_equals_the_model_on_every_architecture(arch, groups_per_block):
    check_fused_equals_unfused(tiny_model(arch), groups_per_block)


@pytest.mark.parametrize("method", ["intraslice", "slicegpt", "wanda"])
def test_fused_step_equals_the_model_on_compressed_models(method):
    model = tiny_model("llama3")
    default_registry().method(method).compress(ModelAdapter(model), synthetic_calibration(), Target(0.3))
    check_fused_equals_unfused(model, 2)


def test_members_that_do_not_share_an_input_are_caught():
    linears = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 6)]
    group = SharedInputGroup(linears)
    q, k = (FusedMember(group, i, 8, lin.out_features) for i, lin in enumerate(linears))
    model = torch.nn.ModuleDict({"group": group})
    x = torch.randn(3, 8)
    torch.testing.assert_close(torch.cat([q(x), k(x)], -1), torch.cat([linears[0](x), linears[1](x)], -1))
    assert check_one_product_per_step(model) == 1
    group.counting, group.products = True, 0
    q(x), k(x.clone())  # k reads another tensor: two products, the second one's rows thrown away
    with pytest.raises(FusionError, match="2 products"):
        check_one_product_per_step(model, steps=1)


def test_compiled_fused_step_compiles_once():
    """State of the groups is the same at the start of every step: dynamo never recompiles."""
    import torch._dynamo

    adapter = ModelAdapter(tiny_model("qwen2"))
    with fused_projections(adapter):
        step = ServingStep.for_spec(adapter, SpeedSpec.parse("decode@1x8"), CPU)
        step()
        check_one_product_per_step(adapter.model, steps=2)
        torch._dynamo.reset()
        compiled = torch.compile(step, backend="eager", dynamic=False)
        with torch._dynamo.config.patch(error_on_recompile=True):
            outputs = [compiled() for _ in range(4)]
    assert all(torch.equal(o, outputs[0]) for o in outputs)


def test_measure_model_fuses_and_reports_it():
    adapter = ModelAdapter(tiny_model("llama3"))
    fused = measure_model(adapter, "unstructured", [SpeedSpec.parse("decode@1x8")], CPU)["decode@1x8"]
    plain = measure_model(adapter, "unstructured", [SpeedSpec.parse("decode@1x8")], CPU, ServingConfig(fuse=False))["decode@1x8"]
    assert fused["fused_groups"] == 2 * len(adapter.blocks) and plain["fused_groups"] == 0
    assert "fusion_error" not in fused and fused["weights_bytes"] == plain["weights_bytes"]


def two_four_model(dtype=torch.bfloat16) -> ModelAdapter:
    from harness.sparsity import prune_mask

    adapter = ModelAdapter(tiny_model("llama3").to(dtype))
    with torch.no_grad():
        for _, linear in adapter.named_linears():
            linear.weight.mul_(prune_mask(linear.weight.abs().float(), 0.5, n_m=(2, 4)).logical_not())
    return adapter


@pytest.mark.parametrize("transposed", [False, True])
def test_a_sparse_linear_runs_its_stated_plan_and_equals_the_dense_product(fake_cusparselt, monkeypatch,
                                                                           transposed):
    """Whatever torch's subclass would do, the product runs the module's plan: the input's rows
    padded to cuSPARSELt's multiple (8 in bf16), the output transposed or not as stated, then
    cut back to the tokens, row-major, equal to the dense product with the bias."""
    from harness.serving import sparse_kernels

    linear = torch.nn.Linear(64, 48, dtype=torch.bfloat16)
    sparse = sparse_kernels.SemiStructuredLinear(linear, transposed_output=transposed)
    assert sparse.transpose_result is transposed and sparse.config == {"alg_id": 0}
    assert not list(sparse.parameters()) and sparse.packed.shape == (48, 64)  # inference only: buffers
    assert torch.equal(sparse.bias, linear.bias) and not sparse.bias.requires_grad
    for tokens in (1, 8, 13):
        x = torch.randn(1, tokens, 64, dtype=torch.bfloat16)
        y = sparse(x)
        assert y.shape == (1, tokens, 48) and y.is_contiguous()
        torch.testing.assert_close(y, linear(x), rtol=3e-2, atol=1e-3)  # bf16 rounding
        assert fake_cusparselt[-1] == {"dense": (64, 8 * -(-tokens // 8)), "transpose_result": transposed, "alg_id": 0}


def test_sparse_kernel_count_survives_a_fusion_fallback(fake_cusparselt):
    """A failed fusion check after the 2:4 conversion re-measures unfused; the record must then
    count every linear on sparse kernels (o/down from the first pass, q/k/v/gate/up from the
    second), not only the second pass's."""
    from harness.serving import sparse_kernels

    adapter = two_four_model()
    blocks = len(adapter.blocks)
    with fused_projections(adapter):
        assert sparse_kernels.to_semi_structured(adapter)["converted"] == 4 * blocks  # qkv, o, gate/up, down
    kernels = sparse_kernels.to_semi_structured(adapter)
    assert kernels["converted"] == 7 * blocks and kernels["backend"] == "cusparselt"  # unfused: all seven


def test_each_phase_tunes_one_sparse_algorithm_per_distinct_product(fake_cusparselt, monkeypatch):
    """cuSPARSELt's search runs once per distinct (shape, bias) at the phase's token count, on the
    plan the product runs (row-major output, padded rows), and every sparse linear of that shape
    gets the winner; a transposed-output plan is not searched. With torch's older search (the
    algorithm alone), a product runs the algorithm found."""
    from harness.serving import sparse_kernels

    searches = []

    def search(packed, dense, bias=None, transpose_result=False):
        assert dense.shape == (packed.shape[1], 8) and not transpose_result  # 3 tokens padded to 8 rows
        searches.append(tuple(packed.shape))
        return len(searches)  # a distinct winner per search

    monkeypatch.setattr(torch._C, "_cusparselt", None, raising=False)  # torch's older search only
    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", search, raising=False)
    adapter = two_four_model()
    with fused_projections(adapter):
        sparse_kernels.to_semi_structured(adapter)
        chosen = sparse_kernels.tune_sparse_kernels(adapter, tokens=3)
        sparse = [m for m in adapter.model.modules() if isinstance(m, sparse_kernels.SemiStructuredLinear)]
        assert len(searches) == len(set(searches)) == len(chosen) == 4  # qkv, o, gate/up, down: blocks share
        assert sorted(c["alg_id"] for c in chosen.values()) == [1, 2, 3, 4] and all(k.endswith("@3") for k in chosen)
        assert len(sparse) == 4 * len(adapter.blocks) and {m.config["alg_id"] for m in sparse} == {1, 2, 3, 4}
        adapter.model(torch.tensor([[1, 2, 3]]))  # the products run with the algorithms found
        assert {call["alg_id"] for call in fake_cusparselt} == {1, 2, 3, 4}
        for module in sparse:  # a transposed-output plan cannot be searched (cuSPARSELt 0.8): left alone
            module.transpose_result = True
        assert sparse_kernels.tune_sparse_kernels(adapter, tokens=3) == {} and len(searches) == 4


def test_a_product_runs_the_split_k_its_search_chose(fake_cusparselt, monkeypatch):
    """torch's newer search returns the split-K settings it chose with the algorithm; the product
    runs all of them, under the keyword this torch's ``_cslt_sparse_mm`` names them by."""
    from types import SimpleNamespace

    from harness.serving import sparse_kernels

    searched = []

    def mm_search(packed, dense, bias, alpha, out_dtype, transpose_result):
        searched.append((tuple(dense.shape), transpose_result))
        return 7, 2, 1, 40  # algorithm, split-K, split-K mode, the largest algorithm id

    monkeypatch.setattr(torch._C, "_cusparselt", SimpleNamespace(mm_search=mm_search), raising=False)
    linear = torch.nn.Linear(64, 48, dtype=torch.bfloat16)
    sparse = sparse_kernels.SemiStructuredLinear(linear)
    chosen = sparse_kernels.tune_sparse_kernels(SimpleNamespace(model=torch.nn.Sequential(sparse)), tokens=20)
    config = {"alg_id": 7, "split_k": 2, sparse_kernels.SPLIT_K_MODE: 1}
    assert searched == [((64, 24), False)] and chosen == {"48x64@20+bias": config} and sparse.config == config
    x = torch.randn(20, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(sparse(x), linear(x), rtol=3e-2, atol=1e-3)
    assert fake_cusparselt[-1] == {"dense": (64, 24), "transpose_result": False, **config}


def test_the_sparse_backend_is_recorded_and_chosen_on_the_command_line(monkeypatch):
    """CUTLASS (``--sparse-backend cutlass``): torch's semi-structured weight under ``linear``,
    nothing to search (a CPU stand-in for the GPU-only conversion)."""
    from harness.cli import build_parser, serving_from
    from harness.serving import sparse_kernels

    layouts = []
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda weight: layouts.append(
        torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS) or weight.clone())
    adapter = two_four_model()
    kernels = sparse_kernels.to_semi_structured(adapter, backend="cutlass")
    assert kernels["backend"] == "cutlass" and kernels["converted"] == 7 * len(adapter.blocks)
    assert all(layouts) and not torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS  # set while converting only
    assert sparse_kernels.tune_sparse_kernels(adapter, tokens=3) == {}
    for command in (["bench", "speed"], ["run"]):
        assert serving_from(build_parser().parse_args(command)).sparse_backend == "cusparselt"
        chosen = build_parser().parse_args(command + ["--sparse-backend", "cutlass"])
        assert serving_from(chosen).sparse_backend == "cutlass"


def test_cutlass_2_4_is_refused_on_a_gpu_it_does_not_run_on(monkeypatch, capsys):
    """torch's CUTLASS 2:4 kernels are built for compute capability 8.x only (on an H200 the
    first product fails deep in a compiled step): the command refuses before building anything."""
    from harness.cli import main
    from harness.serving import sparse_kernels

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    for capability, refused in (((9, 0), True), ((8, 6), False), ((8, 0), False), ((10, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        if refused:
            with pytest.raises(ValueError, match=r"8\.x only.*is \d+\.\d"):
                sparse_kernels.check_sparse_backend("cutlass", torch.device("cuda"))
        else:
            sparse_kernels.check_sparse_backend("cutlass", torch.device("cuda"))
        sparse_kernels.check_sparse_backend("cusparselt", torch.device("cuda"))  # cuSPARSELt: no limit here
    sparse_kernels.check_sparse_backend("cutlass", torch.device("cpu"))  # nothing to refuse off the GPU
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr("harness.run.plan.resolve_device", lambda name: torch.device("cuda"))
    assert main(["bench", "speed", "--sparse-backend", "cutlass", "--methods", "dense"]) == 2
    assert "8.x only" in capsys.readouterr().err
