"""``wanda``: pruning by weights and activations (Sun et al., 2023; locuslab/wanda)."""

from harness import hookimpl

from .wanda import Wanda


@hookimpl
def register_methods(register):
    register(Wanda())
