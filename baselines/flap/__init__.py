"""``flap`` and ``wanda-sp``: heads and MLP channels removed by scores of the inputs of o_proj and
down_proj (An et al., AAAI 2024; CASIA-IVA-Lab/FLAP)."""

from harness import hookimpl

from .flap import FLAP
from .wanda_sp import WandaSP


@hookimpl
def register_methods(register):
    register(FLAP())
    register(WandaSP())
