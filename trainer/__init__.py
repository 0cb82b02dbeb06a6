"""The task-conditioned editing model trainer (issue 8: not built yet; this package is its home)."""
