"""Deep Spectral Methods as a library: images -> ViT features -> Laplacian eigenvectors.

No Ray here; `jobs/` composes these pieces into Ray jobs.
"""
