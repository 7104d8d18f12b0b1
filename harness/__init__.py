"""compression-harness: compare LLM compression methods at matched ratio or speed."""

import pluggy

__version__ = "0.1.0"

#: Decorate a plugin's hook functions with this (see ``harness/hookspecs.py``).
hookimpl = pluggy.HookimplMarker("harness")
