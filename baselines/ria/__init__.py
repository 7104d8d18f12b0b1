"""``ria``: relative importance and activations (Zhang et al., ICLR 2024)."""

from harness import hookimpl

from .ria import RIA


@hookimpl
def register_methods(register):
    register(RIA())
