"""compression-harness: compare LLM compression methods at matched ratio or speed."""

import pluggy

__version__ = "0.1.0"

#: The entry-point group every plugin, the built-in ones included, registers under.
ENTRY_POINT_GROUP = "harness"

#: Decorate a plugin's hook functions with this (see ``harness/hookspecs.py``).
hookimpl = pluggy.HookimplMarker("harness")
