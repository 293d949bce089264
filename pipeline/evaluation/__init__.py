"""Scoring against ground truth: object, semantic and matting metrics, and the panels and
HTML gallery that show results.

May import every stage below it; only `pipeline.batch` (gallery panels) and `jobs/` import it.
"""
