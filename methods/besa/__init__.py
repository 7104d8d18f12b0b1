"""``besa``: blockwise parameter-efficient sparsity allocation (Xu et al., ICLR 2024)."""

from harness import hookimpl

from .besa import BESA


@hookimpl
def register_methods(register):
    register(BESA())
