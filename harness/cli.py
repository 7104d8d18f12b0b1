"""Command line: ``harness run | leaderboard | plugins``. A thin layer over the API."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import tomllib

from harness import __version__
from harness.config import RunConfig

EXAMPLES = """\
examples:
  harness run --methods dense,magnitude --ratios 0.2,0.3 --out results
  harness run --model meta-llama/Llama-2-7b-hf --methods wanda,sparsegpt --pattern 2:4 \\
              --calib c4:128x2048 --eval ppl:wikitext2,c4 --out results
  harness run --config sweep.toml            # any option below, as TOML keys
  harness leaderboard results --out leaderboards
  harness plugins

The ratio r is 1 − P(compressed)/P(dense) over the decoder blocks' linear layers, measured
on the compressed model (nonzeros of masked weights, real shapes of sliced ones, plus any
matrix a method adds). A run whose measured r misses its target by more than 0.5
percentage points fails instead of being reported.
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _option(text: str) -> tuple[str, str, object]:
    """``sliceGPT.slicing=0.25`` → ("slicegpt", "slicing", 0.25)."""
    try:
        key, value = text.split("=", 1)
        method, knob = key.split(".", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"options look like METHOD.KNOB=VALUE, got {text!r}") from None
    for cast in (int, float):
        try:
            return method, knob, cast(value)
        except ValueError:
            pass
    return method, knob, {"true": True, "false": False}.get(value.lower(), value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Compare LLM compression methods at a matched compression ratio.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"compression-harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_run_command, _leaderboard_command, _plugins_command, _export_command, _check_command,
                _bench_command):
        add(sub)
    return parser


def _run_command(sub) -> None:
    """`harness run`: compress and evaluate, one record per method and target."""
    run = sub.add_parser("run", help="compress and evaluate: one record per method and target",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", type=Path, help="a TOML sweep file; flags given here override it")
    run.add_argument("--model", help="embedded name (default smollm2-135m-instruct), hub id, "
                     "local directory or .gguf file")
    run.add_argument("--methods", type=_names, help="comma-separated method names (see `harness plugins`), or all "
                     "(every installed method; all,-sleb: all but sleb)")
    run.add_argument("--ratios", type=_floats, help="target ratios r in (0, 1), e.g. 0.2,0.3")
    run.add_argument("--pattern", help="unstructured (default), 2:4 or 4:8 (fixes r at 0.5)")
    run.add_argument("--calib", dest="calibration", help="calibration set DATASET:NxL (default wikitext2:128x2048)")
    run.add_argument("--seed", type=int, help="calibration seed (default 0)")
    run.add_argument("--eval", dest="evals", action="append",
                     help="evaluations, e.g. ppl:wikitext2,c4 or zeroshot:piqa,arc_easy,arc_challenge,"
                     "hellaswag,winogrande or speed:decode@1x512,prefill@8x2048 (tokens/s and speedup over "
                     "dense, measured in this run; repeatable; default ppl:wikitext2)")
    run.add_argument("--match", help="instead of --ratios: speedup:S searches each method's ratio until its "
                     "measured speedup over dense in --phase is S; memory:M its ratio or quantization grid until "
                     "its decoder blocks keep M of the dense fp16 bytes; then evaluates there")
    run.add_argument("--phase", dest="match_phase", help="the phase --match holds to, PHASE@BxL "
                     "(default decode@1x512)")
    run.add_argument("--zeroshot-limit", type=int, help="examples per zero-shot task (quick runs; recorded)")
    run.add_argument("--eval-windows", type=int, help="evaluate only the first N perplexity windows "
                     "(quick runs; recorded with the result)")
    run.add_argument("--eval-length", type=int, help="perplexity window length (default: context, at most 2048)")
    run.add_argument("--bos", choices=["stream", "window", "none"], help="where a BOS token goes in calibration "
                     "and perplexity windows: stream (default: the tokenizer's own special tokens on the joined text, "
                     "as the papers' reference code; one BOS opens the stream where the tokenizer adds one), window "
                     "(one before every window, as lm-eval's rolling windows), none; recorded as placed")
    run.add_argument("--out", help="directory of run records (default ./results)")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    run.add_argument("--dtype", help="auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    run.add_argument("--batch-size", type=int, help="sequences per forward pass (default 8)")
    run.add_argument("--data-dir", help="local datasets directory (or set HARNESS_DATA_DIR)")
    run.add_argument("--cache-dir", help="tokenised data cache (default ~/.cache/compression-harness)")
    run.add_argument("--option", "-o", dest="option_list", action="append", type=_option, default=[],
                     metavar="METHOD.KNOB=VALUE", help="a method's own knob (repeatable)")
    run.add_argument("--overwrite", action="store_true", default=None, help="redo runs whose records exist")
    run.add_argument("--save-models", action="store_true", default=None,
                     help="save each compressed model under OUT/models/ (load it back with --model DIR)")
    run.add_argument("--leaderboard", metavar="DIR", help="also write leaderboards to DIR afterwards")
    add_serving_options(run)
    ray = run.add_argument_group("Ray (spread the cells over a cluster; pip install 'compression-harness[ray]')")
    ray.add_argument("--executor", choices=["local", "ray"],
                     help="local (default): cells one after another here; ray: one Ray task per cell")
    ray.add_argument("--ray-address", help="join this cluster (auto, ray://host:10001); default: start a local one")
    ray.add_argument("--retries", type=int, help="times Ray reruns a cell whose worker died (default 1)")
    ray.add_argument("--ray-gpus", type=float, help="GPUs per cell (default: 1 if the cluster has GPUs); a "
                     "fraction (0.25) lets quality cells share a GPU; speed cells always get a whole one")
    ray.add_argument("--ray-memory-gb", type=float, help="CPU memory a cell reserves (offloaded weights)")
    ray.add_argument("--ray-accelerator", help="GPU type every cell runs on, e.g. H100 (speed cells are "
                                               "pinned to the first task's GPU type anyway)")



def _leaderboard_command(sub) -> None:
    """`harness leaderboard`: tables, plots and an index from run records."""
    board = sub.add_parser("leaderboard", help="build leaderboard tables from run records")
    board.add_argument("results", type=Path, nargs="+", help="directories of run records (several: --site only)")
    board.add_argument("--site", type=Path, metavar="OUT", help="write the leaderboard site to OUT instead: "
                       "index.html and one page per model with sortable, filterable tables and trade-off plots "
                       "(static, opens from file://; pip install 'compression-harness[site]')")
    board.add_argument("--out", type=Path, default=Path("leaderboards"), help="output directory")
    board.add_argument("--sort", help="metric to rank by (default: first perplexity)")
    board.add_argument("--formats", type=_names, help="subset of formats (default: all reporters)")
    board.add_argument("--metrics", type=_names, help="metric columns to show, as globs "
                       "(e.g. 'ppl:*,zeroshot:*'; default: every metric the records hold)")
    board.add_argument("--deltas", type=_names, help="metrics that get a Δ-vs-dense column, as globs "
                       "(default: every shown metric; '' for none)")
    board.add_argument("--no-plots", dest="plots", action="store_false", help="tables only")
    board.add_argument("--skip-corrupt", action="store_true",
                       help="leave out record files that cannot be read (default: refuse, naming them)")



def _plugins_command(sub) -> None:
    """`harness plugins`: what is installed."""
    sub.add_parser("plugins", help="list loaded plugins, their methods, versions and origins "
                   "(exit status 1 if one failed to load or lacks a package it runs on)")



def _export_command(sub) -> None:
    """`harness export`: a compressed model as safetensors (+ shape plan)."""
    export = sub.add_parser(
        "export", help="write a compressed model as safetensors + config (+ shape plan) that loads without pickle",
        description="Re-export a compressed model: SOURCE is a run record (.json) whose model was saved with "
                    "--save-models, or an export directory. Sparse models come out as standard transformers "
                    "checkpoints (AutoModelForCausalLM.from_pretrained loads them, harness or not); sliced "
                    "models as safetensors plus a shape plan in compression.json (`harness run --model OUT`).")
    export.add_argument("source", type=Path, help="a run record (.json) or an export directory")
    export.add_argument("out", type=Path, help="directory to write")



def _check_command(sub) -> None:
    """`harness check`: the regression gate."""
    check = sub.add_parser("check", help="fail if fresh results are worse than a stored leaderboard")
    check.add_argument("results", type=Path, help="directory of run records, or a leaderboard JSON")
    check.add_argument("--against", type=Path, required=True, help="the stored leaderboard JSON")
    check.add_argument("--rtol", type=float, default=0.02, help="relative tolerance (default 0.02)")
    check.add_argument("--skip-corrupt", action="store_true",
                       help="leave out record files that cannot be read (default: refuse, naming them)")



def _bench_command(sub) -> None:
    """`harness bench compress | speed | table`: benchmarks on random-weight models of named shapes."""
    bench = sub.add_parser("bench", help="benchmarks on random-initialised models of named shapes")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    comp = bench_sub.add_parser("compress", help="time compression: total and per-block seconds, peak GPU memory")
    comp.add_argument("--shape", default="llama-2-7b", help="llama-2-7b (default), llama-2-13b, llama-3-8b, phi-3-mini, smollm2-135m")
    comp.add_argument("--methods", type=_names, default=["wanda", "sparsegpt"])
    comp.add_argument("--calib", default="128x2048", help="N x L calibration tokens (random ids)")
    comp.add_argument("--pattern", default="unstructured")
    comp.add_argument("--ratio", type=float, default=0.5)
    comp.add_argument("--layers", type=int, help="build only this many blocks; the total is extrapolated")
    comp.add_argument("--device", default="auto")
    comp.add_argument("--dtype", default="float16")
    comp.add_argument("--batch-size", type=int, default=8)
    comp.add_argument("--json", type=Path, help="also write the rows to this JSON file")

    table = bench_sub.add_parser("table", help="print the speed table (with what it was measured against) of the "
                                 "rows one or more `bench speed --json` runs wrote")
    table.add_argument("rows", type=Path, nargs="+", help="JSON files written by `harness bench speed --json`")
    speed = bench_sub.add_parser(
        "speed", help="inference throughput of each method's shapes on a random model of a named shape",
        description="Prefill and decode tokens/s as a server sees them (static KV cache, CUDA graph, "
                    "CUDA events, median of repeats), dense measured in the same run. Each method's "
                    "compressed shapes come from its data-free shape probe, so no weights are needed. "
                    "Example: harness bench speed --shape llama-2-7b --methods dense,slicegpt,intraslice,"
                    "sparsegpt --ratio 0.25 --pattern 2:4 --phases decode@1x512,decode@16x512,prefill@8x2048")
    speed.add_argument("--shape", default="llama-2-7b", help="a named shape (see compress)")
    speed.add_argument("--methods", type=_names, default=["dense", "slicegpt", "intraslice", "sparsegpt"])
    speed.add_argument("--phases", type=_names, default=["decode@1x512", "decode@16x512", "prefill@8x2048"],
                       help="PHASE@BxL, comma-separated: prefill@8x2048 (B prompts of L tokens), "
                            "decode@16x512 (B sequences, KV cache of L positions)")
    speed.add_argument("--ratio", type=float, default=0.25, help="ratio for methods without --pattern")
    speed.add_argument("--pattern", default="2:4", help="N:M pattern for the methods that support it")
    speed.add_argument("--match", help="speedup:S: search each method's ratio to S× dense in the first phase")
    speed.add_argument("--option", "-o", dest="option_list", action="append", type=_option, default=[],
                       metavar="METHOD.KNOB=VALUE", help="a method's knob, e.g. -o rtn.bits=8 (repeatable)")
    speed.add_argument("--profile", action="store_true",
                       help="also print each row's top kernels per step (torch.profiler, outside the CUDA graph)")
    add_serving_options(speed)
    speed.add_argument("--layers", type=int, help="build only this many blocks")
    speed.add_argument("--device", default="auto")
    speed.add_argument("--dtype", default="float16")
    speed.add_argument("--json", type=Path, help="also write the rows to this JSON file")


def add_serving_options(parser: argparse.ArgumentParser) -> None:
    """How the measured serving step is built (``ServingConfig``): the same flags for ``run``
    (its speed evaluation and --match) and ``bench speed``; each defaults to the baseline."""
    from harness.serving.config import (
        ATTENTION_KERNELS,
        COMPILE_SCOPES,
        DECODE_KERNELS,
        SPARSE_BACKENDS,
        SPARSE_OUTPUT_COPIES,
    )

    group = parser.add_argument_group(
        "serving step (speed measurements; defaults: the baseline every speed table uses, a sweep file's "
        "[serving] table sets them too)")
    group.add_argument("--no-compile", dest="serving_compile", action="store_false", default=None,
                       help="time eager blocks in a CUDA graph, not the compiled step (compiled on a GPU by default)")
    group.add_argument("--compile-mode", dest="serving_compile_mode",
                       help="inductor mode (default 'default'; max-autotune-no-cudagraphs autotunes the products)")
    group.add_argument("--compile-scope", dest="serving_compile_scope", choices=COMPILE_SCOPES,
                       help="compile the whole step as one graph (default) or each decoder block on its own")
    group.add_argument("--inductor", dest="serving_inductor", metavar="KEY=VALUE", action="append",
                       type=_inductor_option, help="an inductor setting (torch._inductor.config; repeatable)")
    group.add_argument("--attention-kernel", dest="serving_attention_kernel", choices=ATTENTION_KERNELS,
                       help="pin SDPA to one kernel (default: torch's choice)")
    group.add_argument("--decode-kernels", dest="serving_decode_kernels", choices=DECODE_KERNELS,
                       help="decode's one-row products and single-query attention: the faster per shape of "
                            "torch's and the harness's Triton kernels (triton, default), or torch's alone")
    group.add_argument("--no-fuse", dest="serving_fuse", action="store_false", default=None,
                       help="run q/k/v and gate/up as separate products (default: fused)")
    group.add_argument("--no-sparse-kernels", dest="serving_sparse_kernels", action="store_false", default=None,
                       help="keep 2:4 weights on dense kernels (default: sparse tensor cores)")
    group.add_argument("--no-quant-kernels", dest="serving_quant_kernels", action="store_false", default=None,
                       help="run quantized weights dequantised before each product (default: int4 tinygemm and "
                            "int8 weight-only kernels where the format fits)")
    group.add_argument("--sparse-backend", dest="serving_sparse_backend", choices=SPARSE_BACKENDS,
                       help="torch's 2:4 kernels: cusparselt (default) or cutlass (compute capability 8.x)")
    group.add_argument("--sparse-transposed-output", dest="serving_sparse_transposed_output", action="store_true",
                       default=None, help="2:4 products write their output transposed on cuSPARSELt's default "
                                          "algorithm (default: algorithm searched per phase, output copied)")
    group.add_argument("--sparse-output-copy", dest="serving_sparse_output_copy", choices=SPARSE_OUTPUT_COPIES,
                       help="which 2:4 products copy their output to rows in an op of their own (default: attention)")


def serving_from(args: argparse.Namespace, base: dict | None = None):
    """The ``ServingConfig`` of ``base`` (a sweep file's [serving] table) with the flags given."""
    from harness.serving.config import ServingConfig

    values = dict(base or {})
    for name, value in vars(args).items():
        if name.startswith("serving_") and value is not None:
            values[name.removeprefix("serving_")] = dict(value) if name == "serving_inductor" else value
    return ServingConfig.from_dict(values)


def configs_from_args(args: argparse.Namespace) -> list[RunConfig]:
    """The runs a command asks for. A sweep file's top-level keys are ``RunConfig`` fields shared
    by every run; each ``[[runs]]`` table is one run, overriding them (its ``options`` merged
    into the shared ones); without ``[[runs]]`` the file is one run. Flags override the file."""
    shared, runs = {}, [{}]
    if args.config:
        try:
            shared = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"cannot read sweep file {args.config}: {error}") from None
        runs = shared.pop("runs", None) or [{}]
        known = {f.name for f in fields(RunConfig)}
        for where, table in [("", shared)] + [(f" [[runs]] #{i + 1}", run) for i, run in enumerate(runs)]:
            if unknown := set(table) - known:
                raise ValueError(f"unknown keys in {args.config}{where}: {sorted(unknown)}; known: {sorted(known)}")
    configs = []
    for run in runs:
        values = {**shared, **run}
        values["options"] = {m: {**shared.get("options", {}).get(m, {}), **run.get("options", {}).get(m, {})}
                             for m in {*shared.get("options", {}), *run.get("options", {})}}
        for f in fields(RunConfig):
            value = getattr(args, f.name, None)
            if value is not None:
                values[f.name] = value
        for method, knob, value in args.option_list:
            values["options"].setdefault(method, {})[knob] = value
        values["serving"] = serving_from(args, values.get("serving"))
        configs.append(RunConfig(**values))
    return configs


def _inductor_option(text: str) -> tuple[str, object]:
    """``"coordinate_descent_tuning=true"`` → ``("coordinate_descent_tuning", True)``, checked
    against inductor's own settings."""
    from torch._inductor import config as inductor_config

    key, sep, raw = text.partition("=")
    if not sep or key not in inductor_config.get_config_copy():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of torch._inductor.config's settings, "
                                         f"got {text!r}")
    for parse in (int, float):
        try:
            return key, parse(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(raw.lower(), raw)


def cmd_plugins() -> int:
    from harness.models.adapters import ARCHITECTURES
    from harness.plugins import default_registry, missing_requirements

    def print_missing(plugin) -> bool:
        if missing := missing_requirements(plugin):
            print(f"        MISSING: {', '.join(missing)} (pip install {' '.join(missing)})")
        return bool(missing)

    registry = default_registry()
    broken = 0
    for info in registry.plugins:
        status = f"FAILED: {info.error}" if info.error else "ok"
        broken += bool(info.error)
        print(f"{info.name:<14} {info.origin}  [{status}]")
        for name in info.methods:
            m = registry.methods[name]
            archs = ",".join(t for arch in ARCHITECTURES if m.unsupported(arch) is None for t in arch.model_types)
            print(f"    method  {name:<12} {m.kind:<16} patterns={','.join(m.patterns)} "
                  f"architectures={archs}  {m.description}")
            broken += print_missing(m)
            for knob, spec in m.knobs.items():
                print(f"        -o {name}.{knob}={spec.type.__name__} (default {spec.default!r})  {spec.help}")
        for name in info.datasets:
            print(f"    dataset {name:<12} {registry.datasets[name].description}")
        for name in info.evaluations:
            print(f"    eval    {name + ':ARGS':<12} {registry.evaluations[name].description}")
            broken += print_missing(registry.evaluations[name])
        for name in info.reporters:
            print(f"    format  {name}")
    return 1 if broken else 0  # a preflight: `harness plugins` fails where a run would


def cmd_export(source: Path, out: Path) -> int:
    from harness.models.export import (
        is_compressed_dir,
        load_compressed,
        read_metadata,
        save_compressed,
    )
    from harness.results import load_record

    if source.suffix == ".json":
        record = load_record(source)
        if record is None or not record.saved_model:
            raise ValueError(f"{source} is not a run record with a saved model (run it with --save-models)")
        source = Path(record.saved_model)
    if not is_compressed_dir(source):
        raise ValueError(f"{source} is not a harness export (no compression.json)")
    model, tokenizer = load_compressed(source)
    info = {k: v for k, v in read_metadata(source).items()
            if k not in ("format", "harness", "structure", "loadable_by_transformers", "attn_implementation")}
    save_compressed(model, tokenizer, out, info)
    meta = read_metadata(out)
    kind = "a standard transformers checkpoint" if meta["loadable_by_transformers"] else \
        f"safetensors + a shape plan of {len(meta['structure']['modules'])} module(s)"
    print(f"{out}: {kind} ({sum(f.stat().st_size for f in out.glob('*.safetensors')) / 2**20:.1f} MiB of weights)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.models.loading import pick_dtype
    from harness.results import write_json_atomic
    from harness.run.bench import (
        bench_compress,
        bench_speed,
        format_rows,
        format_speed_rows,
        speed_header,
    )
    from harness.run.plan import resolve_device

    if args.bench == "table":
        rows = [row for path in args.rows for row in json.loads(path.read_text())]
        print(speed_header(rows) + "\n\n" + format_speed_rows(rows))
        return 0
    save = (lambda rows: write_json_atomic(args.json, rows)) if args.json else None  # after each method
    if args.bench == "speed":
        from harness.config import DEFAULT_CACHE
        from harness.serving import compilation
        from harness.serving.sparse_kernels import check_sparse_backend

        device = resolve_device(args.device)
        serving = serving_from(args)
        check_sparse_backend(serving.sparse_backend, device)
        compilation.use_compile_cache(DEFAULT_CACHE)
        options: dict[str, dict] = {}
        for method, knob, value in args.option_list:
            options.setdefault(method, {})[knob] = value
        rows = bench_speed(args.shape, args.methods, args.phases, args.ratio, args.pattern, str(device),
                           pick_dtype(args.dtype, str(device)), args.layers, serving, args.match, args.profile,
                           on_rows=save, options=options)
        print(speed_header(rows) + "\n\n" + format_speed_rows(rows))
        return 0

    n, length = (int(x) for x in args.calib.lower().split("x"))
    device = resolve_device(args.device)
    rows = bench_compress(args.shape, args.methods, n, length, args.pattern, args.ratio, args.layers,
                          str(device), pick_dtype(args.dtype, str(device)), args.batch_size, on_rows=save)
    print(format_rows(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "plugins":
            return cmd_plugins()
        if args.command == "check":
            from harness.report.check import compare, failed, report

            comparisons = compare(args.results, args.against, args.rtol, args.skip_corrupt)
            print(report(comparisons))
            if failed(comparisons):
                print(f"harness check: FAILED (worse than {args.against} beyond rtol {args.rtol}, or missing rows)",
                      file=sys.stderr)
                return 1
            compared = sum(c.status in ("ok", "better") for c in comparisons)
            print(f"harness check: OK ({compared} metrics within rtol {args.rtol} or better)")
            return 0
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "export":
            return cmd_export(args.source, args.out)
        if args.command == "leaderboard":
            from harness.report.leaderboard import write_leaderboards

            if args.site:
                from harness.report.site import write_site

                for path in write_site(args.results, args.site):
                    print(path)
                return 0
            if len(args.results) > 1:
                raise ValueError("several record folders make one --site; tables take one folder")
            for path in write_leaderboards(args.results[0], args.out, args.sort, args.formats, plots=args.plots,
                                           skip_corrupt=args.skip_corrupt, metrics=args.metrics,
                                           deltas=args.deltas):
                print(path)
            return 0
        from harness.results import completed
        from harness.run import run

        configs = configs_from_args(args)
        if len(configs) > 1:  # every run of a sweep file checked before the first one starts
            from harness.plugins import default_registry
            from harness.run.plan import plan_evaluations, plan_runs

            for config in configs:
                plan_runs(config, default_registry())
                plan_evaluations(config, default_registry())
        config = configs[0]
        try:
            records = [record for config in configs for record in run(config)]
        except KeyboardInterrupt:
            kept = sum(1 for p in Path(config.out).glob("*.json") if completed(p))
            print(f"\nharness: interrupted; {kept} finished record(s) kept in {config.out}, "
                  "rerun the same command to resume", file=sys.stderr)
            return 130
        failed = [r for r in records if not r.ok]
        if args.leaderboard:
            from harness.report.leaderboard import write_leaderboards
            paths = write_leaderboards(Path(config.out), Path(args.leaderboard))
            for path in paths:
                if path.suffix == ".md" and path.name != "index.md":
                    print(f"\n{path}:\n{path.read_text()}")
        if failed:
            print(f"{len(failed)} run(s) failed: " + "; ".join(f"{r.method}: {r.error}" for r in failed),
                  file=sys.stderr)
            return 1
        return 0
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nharness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
