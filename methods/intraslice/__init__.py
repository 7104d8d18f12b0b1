"""``intraslice``: block-intra PCA structured pruning, fully fused (arXiv 2602.01975).

Registers the method and its ablations: uniform allocation (estimator off), value→output
path only, MLP only.
"""

from harness import hookimpl

from .intraslice import IntraSlice


@hookimpl
def register_methods(register):
    register(IntraSlice())
    register(IntraSlice(name="intraslice-uniform", allocation="uniform"))
    register(IntraSlice(name="intraslice-vo", modules=("vo",)))
    register(IntraSlice(name="intraslice-mlp", modules=("mlp",)))
