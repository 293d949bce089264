"""Alpha from the matting Laplacian, one solver a file (MattingConfig.solver): `cg` the
constrained solve, `spectral` spectral matting's layers and their fit to the trimap.
"""
