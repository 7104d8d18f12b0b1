"""``awq``: activation-aware weight quantization (Lin et al., 2024; mit-han-lab/llm-awq)."""

from harness import hookimpl

from .awq import AWQ


@hookimpl
def register_methods(register):
    register(AWQ())
