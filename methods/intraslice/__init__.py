"""``intraslice``: the authors' IntraSlice (github.com/Asker0Lee/IntraSlice), physically sliced.

Registers the method, its ablations (uniform allocation; attention only; MLP only; Q/K
untouched) and ``intraslice-recon``, the reconstruction this harness used before the
authors' code was read (value-only PCA fold, output-weighted greedy MLP, our estimator),
kept so the leaderboard shows where the two differ.
"""

from harness import hookimpl

from .intraslice import IntraSlice
from .reconstruction import IntraSliceReconstruction


@hookimpl
def register_methods(register):
    register(IntraSlice())
    register(IntraSlice(name="intraslice-uniform", allocation="uniform"))
    register(IntraSlice(name="intraslice-vo", modules=("attention",)))
    register(IntraSlice(name="intraslice-mlp", modules=("mlp",)))
    register(IntraSlice(name="intraslice-noqk", slice_qk=False))
    register(IntraSliceReconstruction())
