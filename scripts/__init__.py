"""Entry points for people: demo, building the embedded model, playground, gallery, inspection, benchmarks."""
