"""Benchmark protocols and runners (JSON + Markdown outputs)."""
