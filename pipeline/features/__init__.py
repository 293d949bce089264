"""Patch features: the backbone registry, position-grid resampling, the offline weights,
and the grid geometry that maps patch cells back to image pixels.

May import `pipeline.io` and `pipeline.config`.
"""
