"""Models: loading a causal LM (embedded default, hub id, directory, GGUF), the per-architecture
adapter every method and evaluation works through, sliced attention modules, exports, and
random-weight models of named shapes."""
