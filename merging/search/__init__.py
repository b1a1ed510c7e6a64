"""Searching merge coefficients: trials, the dev/final split, the study, and the Ray backend."""
