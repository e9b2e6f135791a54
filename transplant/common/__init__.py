"""Shared basics every layer may use: errors, progress bars, text reading."""
