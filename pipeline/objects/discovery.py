"""Several objects per image: candidate patch masks, each with what its score is made of.

Three ways to find them (DISCOVERY), compared by class-agnostic AP in docs/objects.md:

    fiedler     the largest component of the Fiedler vector's positive side (one object)
    components  the components of eigenvectors 1..n_vectors (pipeline.objects.localize)
    iterative   MaskCut's idea on this graph: cut, remove the object's patches from the graph,
                cut the rest again, up to max_objects times

Every candidate carries the quantities a score or a stopping rule can use (its cut's
eigenvalue, area, border contact, rank), so rules can be measured on stored labels without
running the cut again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import smallest_eigenpairs
from kernels.backend import to_numpy
from kernels.lowrank import subgraph
from pipeline.objects.localize import LocalizeConfig, component_candidates, foreground_mask, largest_component
from pipeline.spectral.spectrum import border_mask, orient_by_border


@dataclass(frozen=True)
class DiscoveryConfig:
    # Defaults chosen on the tune half of coco_instances (even image ids) by class-agnostic AP
    # and confirmed on the check half (docs/objects.md).
    method: str = "iterative"  # a DISCOVERY name
    max_objects: int = 8
    # Patch threshold on each cut's oriented Fiedler vector: a number or "mean" (mean: box AP50
    # 6.2 / 5.4 on tune / check against 4.1 / 4.6 at 0).
    threshold: float | str = "mean"
    # Stop when an object covers less than this fraction of the grid ...
    min_area: float = 0.005
    # ... or when the cut that found it is this weak (its eigenvalue on the remaining graph).
    max_eigenvalue: float = 1.0
    # An object (after the first) touching more than this fraction of the grid border is
    # background left over, not an object: it ends the search.
    max_border: float = 1.0
    n_vectors: int = 3  # components: eigenvectors 1..n_vectors


@dataclass(frozen=True)
class Candidate:
    mask: np.ndarray  # (grid_h, grid_w) bool
    rank: int  # 0 = found first
    eigenvalue: float  # of the cut that found it (nan for `components`)
    border: float  # fraction of the grid's border cells inside the mask
    area: float  # fraction of the grid inside the mask
    prior: float  # the method's own score in (0, 1] (components: positive-mass share / index)
    fallback: bool = False  # an empty or full cut: the whole image


def describe(mask: np.ndarray, rank: int, eigenvalue: float, prior: float, fallback: bool = False) -> Candidate:
    border = border_mask(*mask.shape)
    return Candidate(mask=mask, rank=rank, eigenvalue=float(eigenvalue),
                     border=float(mask[border].mean()), area=float(mask.mean()), prior=float(prior),
                     fallback=fallback)


def fiedler_objects(eigenvectors: np.ndarray, eigenvalues: np.ndarray, W, cfg: DiscoveryConfig,
                    first: np.ndarray | None = None) -> list[Candidate]:
    """(k, h, w) oriented eigenvectors -> the one Fiedler object; a non-empty (h, w) bool
    `first` (the self-trained head's mask) takes the Fiedler mask's place, with its eigenvalue."""
    lam = float(eigenvalues[1]) if len(eigenvalues) > 1 else float("nan")
    if first is not None and first.any() and not first.all():
        return [describe(first.astype(bool), 0, lam, 1.0)]
    fiedler = eigenvectors[1] if len(eigenvectors) > 1 else np.zeros(eigenvectors.shape[1:])
    mask, fallback = foreground_mask(fiedler, cfg.threshold)
    return [describe(largest_component(mask, fiedler), 0, lam, 1.0, fallback)]


def component_objects(eigenvectors: np.ndarray, eigenvalues: np.ndarray, W, cfg: DiscoveryConfig,
                      first: np.ndarray | None = None) -> list[Candidate]:
    """The components of eigenvectors 1..n_vectors, the Fiedler object first (no NMS here:
    overlapping masks are ranked by the scorer and left to the consumer)."""
    first = fiedler_objects(eigenvectors, eigenvalues, W, cfg, first)
    loc = LocalizeConfig(threshold=cfg.threshold, n_vectors=cfg.n_vectors, min_area=cfg.min_area)
    found = first + [describe(part, rank, float("nan"), prior)
                     for rank, (prior, part) in enumerate(component_candidates(eigenvectors, loc, exclude=first[0].mask),
                                                          start=1)]
    return found[:cfg.max_objects]


def iterative_objects(eigenvectors: np.ndarray, eigenvalues: np.ndarray, W, cfg: DiscoveryConfig,
                      first: np.ndarray | None = None) -> list[Candidate]:
    """(N, N) affinity W (NumPy or CuPy, dense or sparse) of the (h, w) grid -> objects found
    by repeated normalised cuts, each on the graph of the patches no earlier object took.

    Cut t takes the oriented Fiedler vector of the remaining graph (positive side = the side
    touching the border less, as for the whole image), thresholds it, keeps the largest
    8-connected component of the remaining patches, and removes it. The first cut is the
    whole graph's, i.e. the `fiedler` object (or `first`, as fiedler_objects says).
    """
    h, w = eigenvectors.shape[1:]
    found = fiedler_objects(eigenvectors, eigenvalues, W, cfg, first)
    if found[0].fallback:
        return found
    remaining = ~found[0].mask.ravel()
    while len(found) < cfg.max_objects and remaining.sum() >= max(3, cfg.min_area * h * w):
        index = np.flatnonzero(remaining)
        sub = subgraph(W, index)
        pairs = smallest_eigenpairs(sub, 2)
        grid = np.zeros((2, h * w), np.float32)
        grid[:, index] = to_numpy(pairs.eigenvectors).T
        vec = orient_on(grid[1].reshape(h, w), remaining.reshape(h, w))
        mask, degenerate = foreground_mask(vec[remaining.reshape(h, w)], cfg.threshold)
        if degenerate:
            break
        cut = np.zeros(h * w, bool)
        cut[index[mask]] = True
        part = largest_component(cut.reshape(h, w), vec)
        candidate = describe(part, len(found), float(to_numpy(pairs.eigenvalues)[1]), 1.0 / (len(found) + 1))
        if (candidate.area < cfg.min_area or candidate.eigenvalue > cfg.max_eigenvalue
                or candidate.border > cfg.max_border):
            break
        found.append(candidate)
        remaining &= ~part.ravel()
    return found


def orient_on(vec: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(h, w) eigenvector defined on the `support` cells -> flipped so that its positive side
    touches the border of the grid less (pipeline.spectral.spectrum's rule, cells off the
    support counted as zero)."""
    stacked = np.stack([np.ones_like(vec), np.where(support, vec, 0.0)])
    return orient_by_border(stacked)[1]


DISCOVERY = {"fiedler": fiedler_objects, "components": component_objects, "iterative": iterative_objects}


def discover(eigenvectors: np.ndarray, eigenvalues: np.ndarray, W, cfg: DiscoveryConfig,
             first: np.ndarray | None = None) -> list[Candidate]:
    """The candidates of `cfg.method`, in the order found (the first is the Fiedler object,
    or `first` when given: fiedler_objects)."""
    if cfg.method not in DISCOVERY:
        raise ValueError(f"discovery method must be one of {sorted(DISCOVERY)}, got {cfg.method!r}")
    return DISCOVERY[cfg.method](eigenvectors, eigenvalues, W, cfg, first)
