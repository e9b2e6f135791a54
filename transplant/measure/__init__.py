"""Scoring language models: bits per byte on held-out text."""
