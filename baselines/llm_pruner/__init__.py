"""``llm-pruner``: heads and MLP channels removed by first-order Taylor importance, without the
LoRA recovery (Ma, Fang & Wang, NeurIPS 2023; horseee/LLM-Pruner)."""

from harness import hookimpl

from .llm_pruner import LLMPruner


@hookimpl
def register_methods(register):
    register(LLMPruner())
