"""Fixtures for this stage (filled in by its owner)."""
