"""``slicegpt``: delete rows and columns via residual-stream PCA (Ashkboos et al., ICLR 2024)."""

from harness import hookimpl

from .slicegpt import SliceGPT


@hookimpl
def register_methods(register):
    register(SliceGPT())
