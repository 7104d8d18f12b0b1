"""The project's own compression methods, each a plugin package."""
