"""Semantic segmentation: per-image segments, dataset-wide clustering, pseudo-label maps
and self-training.

May import `pipeline.objects` and below; never `pipeline.matting`.
"""
