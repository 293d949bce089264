"""Deep Spectral Methods as a library: images -> ViT features -> Laplacian eigenvectors -> labels.

One subpackage a stage, imported only downward (checked by the import-linter contracts in
pyproject.toml), low to high: `io`, `features`, `spectral`, `objects`, then `semantic` and
`matting` side by side, then `evaluation`, then `batch`. `config` is the one typed configuration
that every stage reads and every output records. No Ray here; `jobs/` composes these pieces.
"""
