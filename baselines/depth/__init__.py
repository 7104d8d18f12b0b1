"""Depth pruning: whole decoder blocks removed. ``shortgpt`` (Men et al., 2024) ranks blocks once
by how little they change their input; ``sleb`` (Song et al., 2024; jiwonsong-dev/SLEB) removes
them one at a time by the calibration loss of the model without each."""

from harness import hookimpl

from .shortgpt import ShortGPT
from .sleb import SLEB


@hookimpl
def register_methods(register):
    register(ShortGPT())
    register(SLEB())
