"""The built-in evaluations, registered like any plugin: perplexity, zero-shot accuracy, speed."""
