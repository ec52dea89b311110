"""Small shared helpers for scripts and libraries (artifact locations)."""
