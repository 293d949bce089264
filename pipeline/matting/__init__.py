"""Soft alpha mattes: trimaps from the Fiedler object, the fused colour/feature matting
Laplacian and its solvers.

May import `pipeline.objects` and below; never `pipeline.semantic`.
"""
