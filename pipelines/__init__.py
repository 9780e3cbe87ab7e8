"""Orchestration and media I/O; one runnable module per pipeline (python -m pipelines.NAME)."""
