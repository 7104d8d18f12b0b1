"""How a serving step is compiled: inductor's mode, what it compiles, its settings and its caches.

A serving engine runs a compiled step (gpt-fast's ``torch.compile``, vLLM's CUDA graphs around
compiled pieces); the speed baseline does the same (``harness.serving.timing.measure``). Every
setting that changes the compiled code comes from a ``ServingConfig`` and lands in each record.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.serving.device import programmatic_launch

if TYPE_CHECKING:
    from harness.serving.step import ServingStep

#: Settings every step compiled for a Hopper (or newer) GPU gets: programmatic dependent launch,
#: each Triton kernel starting while its predecessor drains, which hides part of the launch gap
#: between a decode step's small kernels. ``ServingConfig.inductor`` overrides them.
HOPPER_OPTIONS: dict = {"triton.enable_pdl": True}


def attention_kernel(name: str | None) -> contextlib.AbstractContextManager:
    """A context in which SDPA uses only the kernel ``name`` (nothing changes for None).
    Inductor fixes the kernel when it traces, so the step compiles inside it."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, name.upper()))


def kernel_routes(choice: str, device: torch.device, attention: bool = True) -> contextlib.AbstractContextManager:
    """A context in which a step's one-row products (and, with ``attention``, its single-query
    attention) run on ``choice``'s kernels (nothing changes for "torch", or off a GPU, where
    Triton has no target); it yields the kernel each shape ran on (``decode_kernels.routed``)."""
    if choice == "torch" or device.type != "cuda":
        return contextlib.nullcontext()
    from harness.serving import decode_kernels

    return decode_kernels.routed(attention)


def inductor_options(device: torch.device, extra: dict | None = None) -> dict:
    """The inductor settings a step compiled for ``device`` gets: ``HOPPER_OPTIONS`` where kernels
    launch as programmatic dependents (those this torch's inductor has), then ``extra``."""
    from torch._inductor import config as inductor_config

    known = inductor_config.get_config_copy()
    hopper = programmatic_launch(device)
    return {**{k: v for k, v in HOPPER_OPTIONS.items() if hopper and k in known}, **(extra or {})}


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
    ``options`` are inductor settings patched in meanwhile (``inductor_options``).
    """
    # Every step shares ServingStep.__call__'s (and every block its class's) code object, so
    # dynamo would guard each new model and shape as a recompile of one function: start each
    # measurement from a clean slate.
    if scope not in ("step", "blocks"):
        raise ValueError(f"compile scope must be 'blocks' or 'step', got {scope!r}")
    torch._dynamo.reset()
    from torch._inductor import config as inductor_config

    with inductor_config.patch(options or {}):  # compiles happen on calls, inside
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
