"""Compute: jobs that read a pinned commit and write to their own branch (not built yet)."""
