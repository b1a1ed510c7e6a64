"""Foundations every layer may use: progress reporting, confidence intervals, safe staged writes, background jobs."""
