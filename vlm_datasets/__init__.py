"""NLVR2-style data: one canonical example, many sources (hub, cached, official layout, JSONL manifest, synthetic).

No re-exports here: importing a submodule (vlm_datasets.config for a parser) must not import datasets."""
