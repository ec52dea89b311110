"""NLVR2-style data: one canonical example, many sources (hub, cached, official layout, JSONL manifest, synthetic)."""

from vlm_datasets.example import CANONICAL_FEATURES, Example, examples_to_dataset, row_to_example

__all__ = ["CANONICAL_FEATURES", "Example", "examples_to_dataset", "row_to_example"]
