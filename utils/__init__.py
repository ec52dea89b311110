"""The bottom layer, importing nothing of the project: artifact locations, atomic writes, run records, user errors and
how entry points end (cli), checkpoint folders, file names from uids, the UID cache (its command:
scripts/uid_cache.py)."""
