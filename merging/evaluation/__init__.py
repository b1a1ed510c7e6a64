"""Scoring a model on a task: classification and causal-LM evaluation, examples, single-task runs."""
