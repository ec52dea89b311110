"""Evaluation: zero-shot and fine-tuned evaluators, scoring, metrics and reports."""
