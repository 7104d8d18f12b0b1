"""``gptq``: one-shot weight quantization with second-order error compensation (Frantar et al., 2023;
IST-DASLab/gptq)."""

from harness import hookimpl

from .gptq import GPTQ


@hookimpl
def register_methods(register):
    register(GPTQ())
