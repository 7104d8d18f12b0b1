"""How a serving step is compiled: inductor's mode, what it compiles, its settings and its caches.

A serving engine runs a compiled step (gpt-fast's ``torch.compile``, vLLM's CUDA graphs around
compiled pieces); the speed baseline does the same (``harness.throughput.measure``), so every
setting that changes the compiled code is one of the names below and lands in each record.
The bench command line sets them for its process (``--compile-mode``, ``--compile-scope``,
``--inductor``); ``measure`` reads them when it compiles.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harness.throughput import ServingStep

#: torch.compile mode of the serving step (see ``measure``).
COMPILE_MODE = "default"
#: What torch.compile compiles (see ``compiled_step``): "step", the whole serving step as one
#: graph (the scope every committed GPU figure was measured with), or "blocks", each decoder
#: block on its own (PyTorch's regional compilation: on an H200 the 7B shape's three dense phases
#: compile in 60 s instead of 98 s, but decode@1x512 runs 3 % slower, a baseline that flatters
#: every method; leaderboards/gpu/speed_llama-2-7b_h200.md).
COMPILE_SCOPE = "step"
#: Inductor settings patched in while a step compiles (``torch._inductor.config`` names, e.g.
#: gpt-fast's ``coordinate_descent_tuning``); set by ``harness bench speed --inductor``. They
#: override ``HOPPER_OPTIONS``.
INDUCTOR_OPTIONS: dict = {}
#: Settings every step compiled for a Hopper (or newer) GPU gets: programmatic dependent launch,
#: each Triton kernel starting while its predecessor drains, which hides part of the launch gap
#: between a decode step's ~10 small kernels per block (H200, Llama-2-7B decode@1x512, compiled
#: step: 73.8 % of the HBM roofline without, 77.3 % with; leaderboards/gpu/runs/README.md).
HOPPER_OPTIONS: dict = {"triton.enable_pdl": True}
#: The attention kernel SDPA must use while a step compiles and runs: None leaves torch's own
#: choice (cuDNN's flash kernel on Hopper), else a name of ``torch.nn.attention.SDPBackend``
#: in lower case ("flash_attention", "efficient_attention", "cudnn_attention", "math");
#: set by ``harness bench speed --attention-kernel``. Inductor fixes the kernel when it traces.
ATTENTION_KERNEL: str | None = None
ATTENTION_KERNELS = ("flash_attention", "efficient_attention", "cudnn_attention", "math")
#: Whose kernels run a decode step's one-row products and single-query attention on a GPU:
#: "triton", the fastest per shape of torch's kernel and ``harness.decode_kernels``' Triton GEMV and
#: split-KV attention at a few settings (as serving engines ship their own; H200, Llama-2-7B
#: decode@1x512: 86.3 % of the HBM roofline against 77.5 % on torch's alone), or "torch". Set by
#: ``harness bench speed --decode-kernels``.
DECODE_KERNELS = "triton"
DECODE_KERNEL_CHOICES = ("torch", "triton")


def attention_kernel() -> contextlib.AbstractContextManager:
    """A context in which SDPA uses only ``ATTENTION_KERNEL`` (nothing changes when it is None)."""
    if ATTENTION_KERNEL is None:
        return contextlib.nullcontext()
    if ATTENTION_KERNEL not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, got {ATTENTION_KERNEL!r}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, ATTENTION_KERNEL.upper()))


def decode_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which a step's one-row products and single-query attention run on
    ``DECODE_KERNELS``' kernels (nothing changes for "torch", or off a GPU, where Triton has no
    target); it yields the kernel each shape ran on (``decode_kernels.routed``), or None."""
    if DECODE_KERNELS not in DECODE_KERNEL_CHOICES:
        raise ValueError(f"decode kernels must be one of {', '.join(DECODE_KERNEL_CHOICES)}, got {DECODE_KERNELS!r}")
    if DECODE_KERNELS == "torch" or device.type != "cuda":
        return contextlib.nullcontext()
    from harness import decode_kernels

    return decode_kernels.routed()


def programmatic_launch(device: torch.device) -> bool:
    """Whether kernels on ``device`` can launch as programmatic dependents (NVIDIA Hopper and
    newer; ROCm reports capabilities ≥ 9 too, but has no ``griddepcontrol``)."""
    return device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device) >= (9, 0)


def inductor_options(device: torch.device) -> dict:
    """The inductor settings a step compiled for ``device`` gets: ``HOPPER_OPTIONS`` where kernels
    launch as programmatic dependents (those this torch's inductor has), then ``INDUCTOR_OPTIONS``."""
    from torch._inductor import config as inductor_config

    known = inductor_config.get_config_copy()
    hopper = programmatic_launch(device)
    return {**{k: v for k, v in HOPPER_OPTIONS.items() if hopper and k in known}, **INDUCTOR_OPTIONS}


@contextlib.contextmanager
def compiled_step(step: ServingStep, mode: str, scope: str, options: dict | None = None):
    """``step`` compiled by inductor in ``mode``, ready to run (its first call compiles).

    Scope "blocks" compiles each decoder block where it sits (``nn.Module.compile``) and leaves
    the glue (embedding, rotary table, logits) eager: blocks of one shape trace to the same graph,
    so inductor lowers it once and serves the other blocks from its graph cache, and compile time
    grows with the number of distinct block shapes rather than with depth (on the CPU, 32 small
    Llama blocks: 29 s instead of 47 s for the whole step). Dynamo still traces every block (HF
    attention indexes the cache with its ``layer_idx``, a constant per block), so the recompile
    limit is raised to the depth, and hitting it is an error instead of a silent eager fallback.
    The CUDA graph captured around the step hides the eager glue's launches either way; what the
    block scope gives up is fusing one block's last add with the next block's first norm.
    Scope "step" compiles the whole step as one graph. Blocks are restored on exit.
    ``options`` are inductor settings patched in meanwhile (default: ``INDUCTOR_OPTIONS``).
    """
    # Every step shares ServingStep.__call__'s (and every block its class's) code object, so
    # dynamo would guard each new model and shape as a recompile of one function: start each
    # measurement from a clean slate.
    if scope not in ("step", "blocks"):
        raise ValueError(f"compile scope must be 'blocks' or 'step', got {scope!r}")
    torch._dynamo.reset()
    from torch._inductor import config as inductor_config

    with inductor_config.patch(INDUCTOR_OPTIONS if options is None else options):  # compiles happen on calls, inside
        if scope == "step":
            yield torch.compile(step, mode=mode, dynamic=False)
        else:
            yield from _compiled_blocks(step, mode)


def use_compile_cache(cache_dir: str | Path | None) -> None:
    """Keep inductor's caches (compiled graphs, Triton kernels, autotuning results) under
    ``cache_dir/inductor`` instead of /tmp: a rerun of the same measurement on the same
    machine reads its compiled step back rather than compiling it again, and Ray workers with a
    shared ``--cache-dir`` share it. A ``TORCHINDUCTOR_CACHE_DIR`` the user set wins; call it
    before the process first compiles (inductor fixes its directory then)."""
    if cache_dir is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).expanduser().resolve() / "inductor"))


def _compiled_blocks(step: ServingStep, mode: str):
    """``compiled_step``'s block scope: each block compiled in place, back to eager on exit."""
    blocks = list(step.adapter.blocks)
    config = torch._dynamo.config
    limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    limits = {limit_name: len(blocks) + 8}
    if hasattr(config, "fail_on_recompile_limit_hit"):
        limits["fail_on_recompile_limit_hit"] = True
    with config.patch(**limits):
        for block in blocks:
            block.compile(mode=mode, dynamic=False)
        try:
            yield step
        finally:
            for block in blocks:
                block._compiled_call_impl = None  # what nn.Module.compile set: back to eager
