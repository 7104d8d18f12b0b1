"""``owl``: outlier-weighed layer-wise sparsity on top of Wanda or SparseGPT (Yin et al., 2024; luuyin/OWL)."""

from harness import hookimpl

from .owl import OWL


@hookimpl
def register_methods(register):
    register(OWL())
