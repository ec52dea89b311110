"""Evaluation: scoring, metrics, comparisons, reports, the gallery page and the playground's engine; the entry points
evals/zero_shot.py, finetuned.py, compare.py, report.py and metrics.py."""
