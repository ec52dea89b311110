"""Small shared helpers, one topic a module: artifact locations, the UID cache, file names from uids, examples by uid,
choosing uids from evaluation runs, the gallery page and the playground's engine."""
