"""Baseline and reference compression methods, each a plugin package."""
