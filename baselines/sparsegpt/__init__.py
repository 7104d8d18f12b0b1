"""``sparsegpt``: one-shot OBS pruning (Frantar & Alistarh, 2023; IST-DASLab/sparsegpt)."""

from harness import hookimpl

from .sparsegpt import SparseGPT


@hookimpl
def register_methods(register):
    register(SparseGPT())
