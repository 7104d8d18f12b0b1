"""The serving step that speed is measured on computes the model's own function.

A decode step over a static KV cache must give the logits a full forward gives at that
position, on every architecture and on compressed models whose shapes differ from the
dense ones (narrow value heads, sliced residual stream). Timings themselves are
benchmarks, not tests: here only their bookkeeping is checked.
"""

import pytest
import torch
from conftest import synthetic_calibration, tiny_model

from harness import hookimpl
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.plugins import default_registry
from harness.serving.config import ServingConfig
from harness.serving.sparse_kernels import is_two_four
from harness.serving.step import ServingStep, SpeedSpec, StaticKVCache
from harness.serving.timing import measure
from harness.sparsity import prune_mask


def full_forward_last(model, ids):
    with torch.no_grad():
        return model(ids).logits[:, -1:]


def check_steps(model):
    adapter = ModelAdapter(model)
    cpu = torch.device("cpu")
    prefill = ServingStep.for_spec(adapter, SpeedSpec("prefill", 2, 10), cpu)
    torch.testing.assert_close(prefill(), full_forward_last(model, prefill.input_ids), rtol=1e-4, atol=1e-4)
    decode = ServingStep.for_spec(adapter, SpeedSpec("decode", 2, 12), cpu)
    ids = torch.cat([decode.prompt_ids, decode.input_ids], dim=1)
    torch.testing.assert_close(decode(), full_forward_last(model, ids), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decode(), full_forward_last(model, ids), rtol=1e-4, atol=1e-4)  # replays are idempotent
    return decode


def test_prefill_and_decode_steps_equal_the_full_forward(any_arch):
    check_steps(tiny_model(any_arch))


@pytest.mark.parametrize("method", ["intraslice", "intraslice-vo", "slicegpt"])
def test_steps_equal_the_full_forward_on_structured_models(method):
    model = tiny_model("llama3")
    ratio = 0.1 if method == "intraslice-vo" else 0.3  # VO paths alone hold ~1/4 of the parameters
    default_registry().method(method).compress(ModelAdapter(model), synthetic_calibration(), Target(ratio))
    decode = check_steps(model)
    model.set_attn_implementation("sdpa")  # unmasked steps (causal prefill, full-cache decode) too
    assert check_steps(model).masks == {"full_attention": None}
    model.set_attn_implementation("eager")
    if method == "intraslice-vo":  # the value cache is as narrow as the value heads
        adapter = ModelAdapter(model)
        widths = [decode.cache.values[i].shape[-1] for i in range(len(adapter.blocks))]
        assert widths == [b.self_attn.v_dim for b in adapter.blocks] and min(widths) < adapter.head_dim


def test_kv_cache_bytes_are_the_analytic_size():
    model = tiny_model("llama3")  # 2 layers, 2 KV heads of 16
    adapter = ModelAdapter(model)
    result = measure(adapter, SpeedSpec.parse("decode@3x20"), torch.device("cpu"), repeats=3, warmup=1)
    assert result["kv_cache_bytes"] == 2 * 2 * 3 * 2 * 20 * 16 * 4
    assert result["weights_bytes"] == sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()])
    assert result["device"].startswith("cpu") and result["cuda_graph"] is False
    assert result["tokens_per_s"] == pytest.approx(3 / (result["step_ms"] / 1e3))


@pytest.mark.parametrize("tied", [True, False])
def test_a_decode_step_reads_every_weight_but_the_untouched_embedding_rows(tied):
    """The roofline's bytes: an untied input embedding is read one row per token, not whole;
    a tied one is read whole by the LM head."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    from harness.serving.step import decode_read_bytes, weight_bytes

    config = tiny_config("llama3")
    config.tie_word_embeddings = tied
    adapter = ModelAdapter(AutoModelForCausalLM.from_config(config))
    table = adapter.embeddings.weight
    assert (adapter.lm_head.weight is table) == tied
    expected = weight_bytes(adapter.model) - (0 if tied else table.numel() * table.element_size())
    assert decode_read_bytes(adapter) == expected
    result = measure(adapter, SpeedSpec.parse("decode@1x8"), torch.device("cpu"), repeats=2, warmup=1)
    assert result["decode_read_bytes"] == expected


def test_prefill_tokens_per_step():
    result = measure(ModelAdapter(tiny_model("llama2")), SpeedSpec.parse("prefill@2x16"), torch.device("cpu"),
                     repeats=3, warmup=1)
    assert result["tokens_per_s"] == pytest.approx(32 / (result["step_ms"] / 1e3))


@pytest.mark.parametrize("text", ["decode", "decode@1", "decode@0x16", "generate@1x16", "prefill@1x1"])
def test_bad_speed_specs_are_refused(text):
    with pytest.raises(ValueError):
        SpeedSpec.parse(text)


def test_two_four_detection():
    w = torch.randn(8, 16)
    assert not is_two_four(w)
    assert is_two_four(w * prune_mask(w.abs(), 0.5, (2, 4)).logical_not())
    four_eight = torch.tensor([[1.0, 1, 1, 0, 1, 0, 0, 0]])  # 4:8 but 3 of the first 4
    assert not is_two_four(four_eight)
    assert not is_two_four(torch.randn(8, 6))


def test_static_cache_writes_where_positions_point():
    cache = StaticKVCache(6)
    cache.positions = torch.tensor([4])
    k, v = cache.update(torch.ones(1, 2, 1, 3), torch.full((1, 2, 1, 5), 2.0), layer_idx=0)
    assert k.shape == (1, 2, 6, 3) and v.shape == (1, 2, 6, 5)
    assert k[0, :, 4].eq(1).all() and k[0, :, :4].eq(0).all() and v[0, :, 4].eq(2).all()


def test_profile_names_where_a_step_spends_its_time():
    """The profile's table is the step's own operators: the matrix products lead a prefill,
    shares are fractions of the profiled total, and measure() attaches it only on request."""
    from harness.serving.timing import profile_step

    adapter = ModelAdapter(tiny_model("llama3"))
    cpu = torch.device("cpu")
    step = ServingStep.for_spec(adapter, SpeedSpec("prefill", 4, 64), cpu)
    ops = profile_step(step, cpu, steps=2, top=5)
    assert 1 <= len(ops) <= 5 and all(0 < op["share"] <= 1 for op in ops)
    assert sum(op["share"] for op in ops) <= 1 + 1e-9
    assert [op["ms_per_step"] for op in ops] == sorted((op["ms_per_step"] for op in ops), reverse=True)
    assert any("mm" in op["op"] or "linear" in op["op"] for op in ops[:3]), ops
    assert "profile" not in measure(adapter, SpeedSpec("decode", 1, 8), cpu, repeats=2, warmup=1)
    assert measure(adapter, SpeedSpec("decode", 1, 8), cpu, repeats=2, warmup=1, profile=True)["profile"]


def test_bench_speed_command_prints_rows_and_profiles(capsys):
    from harness.cli import main

    assert main(["bench", "speed", "--shape", "smollm2-135m", "--layers", "2", "--methods", "dense,magnitude,slicegpt",
                 "--phases", "prefill@1x32", "--ratio", "0.3", "--pattern", "unstructured", "--device", "cpu",
                 "--no-compile", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "| dense" in out and "| magnitude | unstructured" in out
    assert "| slicegpt  | structured" in out  # sliced, not masked
    assert "dense unstructured prefill@1x32: top kernels per step" in out


def test_the_row_copy_op_is_the_transpose_eager_and_compiled():
    """``rows_from_columns`` (the 2:4 products' own output copy) is a registered op whose fake
    shape matches its kernel, and gives the transpose, eager and inside a compiled function."""
    from harness.serving.sparse_kernels import rows_from_columns

    columns = torch.randn(24, 40)
    torch.library.opcheck(torch.ops.harness.rows_from_columns.default, (columns,),
                          test_utils=("test_schema", "test_faketensor"))
    assert torch.equal(rows_from_columns(columns), columns.t())
    compiled = torch.compile(lambda c: rows_from_columns(c)[:30] * 2, dynamic=False)
    assert torch.equal(compiled(columns), columns.t()[:30] * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need a CUDA GPU")
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("plan", ["transposed", "copy-fused", "copy-own"])
def test_semi_structured_linear_equals_the_masked_dense_product(bias, plan, monkeypatch):
    """On the GPU: the sparse-kernel linear gives the masked dense product, laid out row-major,
    eager and compiled, on each cuSPARSELt plan (output transposed by cuSPARSELt, or copied:
    by inductor in the consumer, or by the module's own copy op)."""
    from harness.serving.sparse_kernels import SemiStructuredLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256, bias=bias, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        linear.weight.mul_(prune_mask(linear.weight.abs(), 0.5, n_m=(2, 4)).logical_not())
    sparse = SemiStructuredLinear(linear, own_copy=plan == "copy-own", transposed_output=plan == "transposed")
    compiled = torch.compile(lambda x: torch.nn.functional.silu(sparse(x)), dynamic=False)
    for tokens in (1, 7, 64, 300):  # decode, padded and unpadded prefill sizes
        x = torch.randn(2, tokens, 512, device="cuda", dtype=torch.float16)
        y = sparse(x)
        assert y.shape == (2, tokens, 256) and y.is_contiguous()
        torch.testing.assert_close(y, linear(x), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(compiled(x), torch.nn.functional.silu(linear(x)), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need a CUDA GPU")
@pytest.mark.parametrize("output_copy, own", [
    ("attention", {"q_k_v": True, "gate_up": False, "o": False, "down": False}),
    ("none", {"q_k_v": False, "gate_up": False, "o": False, "down": False}),
    ("all", {"q_k_v": True, "gate_up": True, "o": True, "down": True})])
def test_the_q_k_v_products_copy_their_output_on_their_own(output_copy, own, monkeypatch):
    """The output-copy setting picks the products by role (a fused group by its members), and the 2:4
    model on sparse kernels, compiled, gives the masked dense model's logits either way."""
    from harness.serving.fusion import fused_projections
    from harness.serving.sparse_kernels import SemiStructuredLinear, to_semi_structured

    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False)  # sizes the kernels tile
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).cuda().eval()
    adapter = ModelAdapter(model)
    for block in adapter.blocks:
        for linear in adapter.linears(block).values():
            with torch.no_grad():
                linear.weight.mul_(prune_mask(linear.weight.abs(), 0.5, n_m=(2, 4)).logical_not())
    ids = torch.randint(0, model.config.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        expected = model(ids).logits
        with fused_projections(adapter, offload=False):
            kernels = to_semi_structured(adapter, output_copy=output_copy)
            block = adapter.blocks[0]
            copies = {name.removeprefix("fused_").split(".")[0] if name.startswith("fused_") else
                      name.split(".")[-1].removesuffix("_proj"): module.own_copy
                      for name, module in block.named_modules() if isinstance(module, SemiStructuredLinear)}
            assert copies == own
            assert kernels["own_copy"] == sum(own.values()) * len(adapter.blocks)
            logits = torch.compile(model, dynamic=False)(ids).logits
    torch.testing.assert_close(logits, expected, rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need a CUDA GPU")
def test_a_tuned_sparse_algorithm_computes_the_same_product(monkeypatch):
    from types import SimpleNamespace

    from harness.serving.sparse_kernels import SemiStructuredLinear, tune_sparse_kernels

    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        linear.weight.mul_(prune_mask(linear.weight.abs(), 0.5, n_m=(2, 4)).logical_not())
    sparse = SemiStructuredLinear(linear)
    for tokens in (1, 300):
        chosen = tune_sparse_kernels(SimpleNamespace(model=torch.nn.Sequential(sparse)), tokens)
        assert list(chosen) == [f"256x512@{tokens}+bias"]
        x = torch.randn(tokens, 512, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(sparse(x), linear(x), rtol=2e-2, atol=2e-2)


def test_a_compile_mode_reaches_inductor_and_the_record(monkeypatch):

    seen = []

    def fake_compile(fn, mode=None, dynamic=None):
        seen.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    adapter = ModelAdapter(tiny_model("llama3"))
    spec, cpu = SpeedSpec.parse("decode@1x8"), torch.device("cpu")
    compiled = ServingConfig(compile=True)
    autotuned = ServingConfig(compile=True, compile_mode="max-autotune-no-cudagraphs")
    result = measure(adapter, spec, cpu, autotuned, repeats=2, warmup=1)
    assert seen == ["max-autotune-no-cudagraphs"]
    assert result["compile_mode"] == "max-autotune-no-cudagraphs" and result["compile_scope"] == "step"
    assert measure(adapter, spec, cpu, compiled, repeats=2, warmup=1)["compile_mode"] == "default"
    eager = measure(adapter, spec, cpu, repeats=2, warmup=1)  # CPU default: eager
    assert eager["compile_mode"] is None and eager["compile_scope"] is None
    assert seen == ["max-autotune-no-cudagraphs", "default"]
    blocks = ServingConfig(compile=True, compile_scope="blocks")  # regional: one compile per block
    assert measure(adapter, spec, cpu, blocks, repeats=2, warmup=1)["compile_scope"] == "blocks"
    assert seen == ["max-autotune-no-cudagraphs", "default"] + ["default"] * len(adapter.blocks)
    from harness.cli import build_parser, serving_from  # run and bench speed take the same flags

    for command in (["bench", "speed"], ["run"]):
        chosen = serving_from(build_parser().parse_args(command + ["--compile-mode", "max-autotune-no-cudagraphs"]))
        assert chosen.compile_mode == "max-autotune-no-cudagraphs" and chosen.compile_scope == "step"
        assert serving_from(build_parser().parse_args(command + ["--no-compile"])).compile is False
        assert serving_from(build_parser().parse_args(command + ["--compile-scope", "blocks"])).compile_scope == "blocks"


def test_sdpa_steps_pass_no_mask_where_causal_says_it_all(any_arch):
    """With SDPA, prefill from position 0 runs SDPA's own causal kernel and a decode step that
    sees the whole cache runs unmasked (as serving engines do), and both still equal the full
    forward; eager attention keeps explicit masks, as does a sliding window shorter than the cache."""
    model = tiny_model(any_arch)
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError) as error:  # an architecture without SDPA support
        pytest.skip(str(error))
    adapter = ModelAdapter(model)
    decode = check_steps(model)
    prefill = ServingStep.for_spec(adapter, SpeedSpec("prefill", 2, 10), torch.device("cpu"))
    window = adapter.sliding_window
    for step, length in ((prefill, 10), (decode, 12)):
        for layer_type, mask in step.masks.items():
            windowed = layer_type == "sliding_attention" and window and window < length
            assert (mask is not None) == bool(windowed), (layer_type, step.masks)
    eager = ServingStep.for_spec(ModelAdapter(tiny_model(any_arch)), SpeedSpec("prefill", 2, 10), torch.device("cpu"))
    assert all(mask is not None for mask in eager.masks.values())


@pytest.mark.parametrize("scope", ["blocks", "step"])
def test_compiled_step_equals_the_eager_one_and_blocks_are_restored(monkeypatch, scope):
    """Dynamo for real (inductor's code generation aside): every block of a model deeper than
    dynamo's default recompile limit (8) is compiled, none falls back to eager silently, the
    logits equal the eager step's, and the blocks are eager again afterwards."""
    from conftest import tiny_config
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    from harness.serving.compilation import compiled_step

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: real_compile(
        fn, backend="eager", dynamic=dynamic))
    config = tiny_config("llama3")
    config.num_hidden_layers = 10
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    adapter = ModelAdapter(model)
    step = ServingStep.for_spec(adapter, SpeedSpec("decode", 2, 12), torch.device("cpu"))
    expected = step()
    counters.clear()
    with compiled_step(step, "default", scope) as run:
        for _ in range(2):  # the second call replays what the first compiled
            torch.testing.assert_close(run(), expected)
    frames = counters["frames"]["ok"]
    assert frames >= (10 if scope == "blocks" else 1), dict(counters["frames"])
    assert all(block._compiled_call_impl is None for block in adapter.blocks)
    counters.clear()
    torch.testing.assert_close(step(), expected)
    assert counters["frames"]["ok"] == 0  # eager again: nothing traced
    with pytest.raises(ValueError, match="compile scope"):
        with compiled_step(step, "default", "model"):
            pass


def test_bench_speed_json_keeps_the_rows_of_a_run_cut_short(tmp_path, monkeypatch):
    """The JSON is rewritten (atomically) after each method, so a run that dies on a later
    method (or is killed at a deadline) leaves the rows it measured."""
    import json

    from harness.cli import main
    from harness.run import speedmatch

    real_probe = speedmatch.probe_speed

    def probe_or_die(method, *args, **kwargs):
        if method.name == "wanda":
            raise RuntimeError("the GPU went away")
        return real_probe(method, *args, **kwargs)

    monkeypatch.setattr(speedmatch, "probe_speed", probe_or_die)
    out = tmp_path / "rows.json"
    with pytest.raises(RuntimeError, match="went away"):
        main(["bench", "speed", "--shape", "smollm2-135m", "--layers", "1", "--methods", "dense,magnitude,wanda",
              "--phases", "decode@1x8", "--ratio", "0.3", "--pattern", "unstructured", "--device", "cpu",
              "--no-compile", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["dense", "magnitude"]


def test_bench_compress_extrapolates_each_phase_by_what_it_scales_with(monkeypatch):
    """Work a method does outside the block-by-block walk (a global pass over every block) grows
    with the depth too: one block run of a 30-block shape extrapolates it 30 times, not zero."""
    import time as clock

    from baselines.magnitude import Magnitude
    from harness.plugins import load_plugins
    from harness.run import bench

    class GlobalPass(Magnitude):
        name = "global-pass"

        def compress(self, model, calibration, target):
            clock.sleep(0.05 * len(model.blocks))  # a pass over every block before the walk
            for _ in calibration.sequential(model):
                pass
            return super().compress(model, calibration, target)

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(GlobalPass())

    registry = load_plugins(extra=[Plugin()])
    monkeypatch.setattr(bench, "default_registry", lambda: registry)
    (row,) = bench.bench_compress("smollm2-135m", ["global-pass"], 2, 16, layers=1, device="cpu",
                                  dtype=torch.float32, log=lambda *a: None)
    assert row["outside_walk_s"] >= 0.05 and row["blocks_full"] == 30
    assert row["total_extrapolated_s"] >= 30 * 0.05 + 30 * row["median_block_s"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is a GPU figure")
def test_a_rows_peak_memory_is_the_measured_models_alone():
    """Another model resident on the GPU (the dense one a bench keeps) is not the measured model's."""
    model = tiny_model("llama3").cuda().half()
    spec, gpu = SpeedSpec.parse("decode@1x64"), torch.device("cuda")
    alone = measure(ModelAdapter(model), spec, gpu, repeats=3, warmup=1)["peak_bytes"]
    resident = torch.empty(256 * 2**20, dtype=torch.uint8, device=gpu)
    beside = measure(ModelAdapter(model), spec, gpu, repeats=3, warmup=1)["peak_bytes"]
    assert beside < alone + 16 * 2**20 and alone < resident.numel()


def test_bench_compress_writes_its_rows_as_it_goes(tmp_path):
    import json

    from harness.cli import main

    out = tmp_path / "compress.json"
    assert main(["bench", "compress", "--shape", "smollm2-135m", "--layers", "1", "--methods", "magnitude,wanda",
                 "--calib", "2x16", "--device", "cpu", "--dtype", "float32", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["magnitude", "wanda"]


def test_inductor_settings_hold_while_the_step_compiles(monkeypatch):
    """`--inductor KEY=VALUE` reaches torch._inductor.config during compilation (when inductor
    reads it), is undone afterwards, lands in the record, and bad keys are refused."""
    import argparse

    from torch._inductor import config as inductor_config

    from harness.cli import _inductor_option, build_parser, serving_from

    seen = []

    def fake_compile(fn, mode=None, dynamic=None):
        def run(*args, **kwargs):
            seen.append(inductor_config.coordinate_descent_tuning)
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    serving = ServingConfig(compile=True, inductor={"coordinate_descent_tuning": True})
    before = inductor_config.coordinate_descent_tuning
    adapter = ModelAdapter(tiny_model("llama3"))
    result = measure(adapter, SpeedSpec.parse("decode@1x8"), torch.device("cpu"), serving, repeats=2, warmup=1)
    assert seen and all(seen) and inductor_config.coordinate_descent_tuning == before is False
    assert result["inductor_options"] == {"coordinate_descent_tuning": True}
    args = build_parser().parse_args(["bench", "speed", "--inductor", "coordinate_descent_tuning=true",
                                      "--inductor", "max_autotune_gemm_backends=TRITON"])
    assert serving_from(args).inductor == {"coordinate_descent_tuning": True, "max_autotune_gemm_backends": "TRITON"}
    with pytest.raises(argparse.ArgumentTypeError):
        _inductor_option("no_such_setting=1")


def test_hopper_steps_compile_with_programmatic_dependent_launch_unless_told_otherwise(monkeypatch):
    from harness.serving import compilation

    gpu = torch.device("cuda", 0)
    for capability, expected in (((9, 0), {"triton.enable_pdl": True}), ((8, 0), {})):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert compilation.inductor_options(gpu) == expected
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    told = {"triton.enable_pdl": False, "coordinate_descent_tuning": True}
    assert compilation.inductor_options(gpu, told) == told
    assert compilation.inductor_options(torch.device("cpu"), told) == told


def test_programmatic_launch_is_asked_for_only_where_the_gpu_has_it(monkeypatch):
    from harness.serving.device import programmatic_launch

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    for capability, expected in (((8, 0), False), ((9, 0), True), ((10, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert programmatic_launch(gpu) is expected
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm reports gfx94x as 9.4 but has no griddepcontrol
    assert not programmatic_launch(gpu) and not programmatic_launch(cpu)


def test_the_attention_kernel_setting_binds_every_sdpa_call_of_a_measurement(monkeypatch):
    from harness.cli import build_parser
    from harness.run.bench import speed_header
    from harness.serving.config import ATTENTION_KERNELS

    model = tiny_model("llama3")
    model.config._attn_implementation = "sdpa"  # the tiny models attend eagerly; a served one through SDPA
    adapter = ModelAdapter(model)
    spec, cpu = SpeedSpec.parse("decode@1x8"), torch.device("cpu")
    result = measure(adapter, spec, cpu, ServingConfig(compile=False, attention_kernel="math"), repeats=2, warmup=1)
    assert result["attention_kernel"] == "math"
    assert "SDPA on math" in speed_header([{**result, "method": "dense", "compiled": False}])
    with pytest.raises(RuntimeError, match="No viable backend"):  # none on a CPU: SDPA refuses
        measure(adapter, spec, cpu, ServingConfig(compile=False, attention_kernel="efficient_attention"),
                repeats=2, warmup=1)
    with pytest.raises(ValueError, match="attention_kernel must be one of"):
        ServingConfig(attention_kernel="fastest")
    choices = next(a.choices for a in build_parser()._subparsers._group_actions[0].choices["bench"]
                   ._subparsers._group_actions[0].choices["speed"]._actions if a.dest == "serving_attention_kernel")
    assert tuple(choices) == ATTENTION_KERNELS


def test_the_decode_kernel_setting_is_checked_recorded_and_offered(monkeypatch):
    from harness.cli import build_parser, serving_from
    from harness.run.bench import speed_header
    from harness.serving.config import BASELINE, DECODE_KERNELS

    adapter, spec, cpu = ModelAdapter(tiny_model("llama3")), SpeedSpec.parse("decode@1x8"), torch.device("cpu")
    assert BASELINE.decode_kernels == "triton"  # the default: the fastest of torch's and ours per shape
    result = measure(adapter, spec, cpu, ServingConfig(compile=False), repeats=2, warmup=1)
    assert result["decode_kernels"] == "torch" and result["gemv_kernels"] is None  # no Triton target on a CPU
    with pytest.raises(ValueError, match="decode_kernels must be one of"):
        ServingConfig(decode_kernels="cutlass")
    row = {"method": "dense", "compiled": True, "cuda_graph": True, "decode_kernels": "triton"}
    assert "fastest of torch's kernel and harness.serving.decode_kernels' Triton kernels" in speed_header([row])
    assert "Triton kernels" not in speed_header([{**row, "decode_kernels": "torch"}])
    assert "Rows differ" in speed_header([row, {**row, "decode_kernels": "torch"}])
    speed = next(a for a in build_parser()._subparsers._group_actions[0].choices["bench"]
                 ._subparsers._group_actions[0].choices["speed"]._actions if a.dest == "serving_decode_kernels")
    assert tuple(sorted(speed.choices)) == tuple(sorted(DECODE_KERNELS))
    assert serving_from(build_parser().parse_args(["bench", "speed"])).decode_kernels == "triton"


def test_compiled_steps_are_cached_under_the_harness_cache(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from harness.serving.compilation import use_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "recorded")  # so that the test's own setting is undone
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_compile_cache(tmp_path / "cache")
    assert cache_dir() == str(tmp_path / "cache" / "inductor")  # where inductor now writes
    use_compile_cache(tmp_path / "elsewhere")  # the first setting (or the user's) wins
    assert cache_dir() == str(tmp_path / "cache" / "inductor")


def test_the_speed_table_sums_each_methods_compile_time():
    from harness.run.bench import format_speed_rows

    rows = [{"method": "dense", "pattern": "unstructured", "phase": p, "compile_s": s}
            for p, s in (("decode@1x512", 35.5), ("prefill@8x2048", 24.0))]
    rows.append({"method": "sparsegpt", "pattern": "2:4", "phase": "decode@1x512", "compile_s": 40.0})
    assert format_speed_rows(rows).endswith("compile s per method, all phases: dense 59.5, sparsegpt 40.0")
    assert "compile s per method" not in format_speed_rows([{**rows[0], "compile_s": None}])


def test_a_speed_table_says_what_it_was_measured_against(tmp_path, capsys):
    import json

    from harness.cli import main
    from harness.run.bench import speed_header

    row = {"method": "dense", "pattern": "unstructured", "phase": "decode@1x512", "tokens_per_s": 228.8,
           "device": "NVIDIA H200", "dtype": "float16", "torch": "2.11.0", "compiled": True,
           "compile_mode": "default", "compile_scope": "blocks", "inductor_options": {"coordinate_descent_tuning": True},
           "cuda_graph": True, "fused_groups": 64, "bandwidth_gbs": 4254.0, "peak_tflops": 744.0, "compile_s": 30.0}
    header = speed_header([row])
    assert "NVIDIA H200, float16, torch 2.11.0" in header
    assert "inductor mode default, scope blocks, coordinate_descent_tuning=True" in header
    assert "one CUDA graph per step" in header and "fused" in header and "4254 GB/s" in header
    assert "Rows differ" not in header and "4254 GB/s (decode `roofline`), fp16 matmul peak 744 TFLOPS" in header
    other_run = {**row, "bandwidth_gbs": 4231.2, "peak_tflops": 777.0}
    assert ("copy bandwidth 4254 / 4231 GB/s (decode `roofline`), fp16 matmul peak 744 / 777 TFLOPS (prefill "
            "`peak_frac`), measured by each run for its own rows.") in speed_header([row, other_run])
    eager = {**row, "compiled": False, "phase": "prefill@8x2048", "tokens_per_s": 42430.9}
    assert "Rows differ in their compile settings" in speed_header([row, eager])
    assert speed_header([eager]).splitlines()[1].startswith("Baseline: eager blocks, then one CUDA graph")
    files = []
    for name, rows in (("decode", [row]), ("prefill", [eager])):  # two calls' rows, one table
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(rows))
    assert main(["bench", "table", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert "| decode@1x512" in out and "| prefill@8x2048" in out and "42,431" in out
