"""Entry points for people: demo, building the embedded model, playground, gallery, inspection, UID-cache bookmarks,
sweeps, benchmarks."""
