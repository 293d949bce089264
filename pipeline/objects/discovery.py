"""Several objects per image: candidate patch masks, each with what its score is made of.

Three ways to find them (DISCOVERY), compared by class-agnostic AP in docs/objects-results.md:

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
from kernels.backend import array_module, to_numpy
from kernels.batched_eigensolver import pad_graphs, smallest_eigenpairs_batched
from kernels.lowrank import subgraph
from pipeline.config import check
from pipeline.objects.localize import LocalizeConfig, component_candidates, foreground_mask, largest_component
from pipeline.spectral.spectrum import border_mask, is_dense, orient_by_border


@dataclass(frozen=True)
class DiscoveryConfig:
    # Defaults chosen on the tune half of coco_instances (even image ids) by class-agnostic AP
    # and confirmed on the check half (docs/objects-results.md).
    method: str = "iterative"  # a DISCOVERY name
    max_objects: int = 8
    # Patch threshold on each cut's oriented Fiedler vector: a number or "mean" (mean: box AP50
    # 6.2 / 5.4 on tune / check against 4.1 / 4.6 at 0).
    threshold: float | str = "mean"
    # Stop when an object covers less than this fraction of the grid.
    min_area: float = 0.005
    n_vectors: int = 3  # components: eigenvectors 1..n_vectors

    # Stopping rules measured and not adopted (docs/objects-results.md), removed since, each with the
    # value at which it was off: a cut weaker than max_eigenvalue, or an object touching more
    # than max_border of the grid border, ended the search. LabelConfig's digests put them back
    # at these values, so runs stored before keep their digests; a stored config holding one at
    # this value still loads, at any other it is refused (pipeline.settings.without_removed).
    REMOVED_SETTINGS = {"max_eigenvalue": 1.0, "max_border": 1.0}

    def __post_init__(self):
        check(self.method in DISCOVERY, "discovery.method", f"one of {sorted(DISCOVERY)}", self.method)
        check(self.max_objects >= 1, "discovery.max_objects", ">= 1", self.max_objects)
        check(self.threshold == "mean" or isinstance(self.threshold, (int, float)), "discovery.threshold",
              "a number or 'mean'", self.threshold)
        check(0 <= self.min_area < 1, "discovery.min_area", "a share of the grid in [0, 1)", self.min_area)
        check(self.n_vectors >= 1, "discovery.n_vectors", ">= 1", self.n_vectors)


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
    return iterative_objects_batch([(eigenvectors, eigenvalues, W, first)], cfg)[0]


@dataclass
class _Cutting:
    """One image's iterative cut in progress: what it found, the cells still in its graph
    (None once it stopped), its graph."""

    found: list[Candidate]
    remaining: np.ndarray | None  # (h·w,) bool
    grid: tuple[int, int]
    W: object

    def goes_on(self, cfg: DiscoveryConfig) -> bool:
        return (self.remaining is not None and len(self.found) < cfg.max_objects
                and self.remaining.sum() >= max(3, cfg.min_area * self.remaining.size))


def iterative_objects_batch(images: list[tuple], cfg: DiscoveryConfig, batched: bool = False) -> list[list[Candidate]]:
    """iterative_objects of several images, (eigenvectors, eigenvalues, W, first) each, in
    rounds across the batch: round t makes cut t of every image still cutting, all its
    remaining graphs solved in one call (remaining_fiedler); an image leaves when it stops.
    The same objects as image by image: each image's rounds depend on its own graph only."""
    images_cut = []
    for eigenvectors, eigenvalues, W, first in images:
        found = fiedler_objects(eigenvectors, eigenvalues, W, cfg, first)
        images_cut.append(_Cutting(found, None if found[0].fallback else ~found[0].mask.ravel(),
                                   eigenvectors.shape[1:], W))
    active = images_cut
    while True:
        active = [c for c in active if c.goes_on(cfg)]
        if not active:
            return [c.found for c in images_cut]
        cuts = remaining_fiedler([c.W for c in active], [c.remaining for c in active], batched)
        for c, (lam, vec) in zip(active, cuts):
            if not _next_cut(c.found, c.remaining, *c.grid, lam, vec, cfg):
                c.remaining = None


def _next_cut(found: list[Candidate], remaining: np.ndarray, h: int, w: int, lam: float, vec: np.ndarray,
              cfg: DiscoveryConfig) -> bool:
    """One cut of iterative_objects from the remaining graph's Fiedler pair (vec: (h·w,), 0
    off `remaining`): appends its object to `found` and takes it from `remaining` (in place),
    or returns False when the search stops."""
    vec = orient_on(vec.reshape(h, w), remaining.reshape(h, w))
    mask, degenerate = foreground_mask(vec[remaining.reshape(h, w)], cfg.threshold)
    if degenerate:
        return False
    index = np.flatnonzero(remaining)
    cut = np.zeros(h * w, bool)
    cut[index[mask]] = True
    part = largest_component(cut.reshape(h, w), vec)
    candidate = describe(part, len(found), lam, 1.0 / (len(found) + 1))
    if candidate.area < cfg.min_area:
        return False
    found.append(candidate)
    remaining &= ~part.ravel()
    return True


def remaining_fiedler(graphs: list, remaining: list[np.ndarray], batched: bool = False) -> list[tuple[float, np.ndarray]]:
    """Graphs (N_i, N_i) and (N_i,) bool masks of the nodes still in them -> per graph the
    (eigenvalue, (N_i,) float32 eigenvector, 0 off the mask) of the Fiedler pair of the
    sub-graph on the mask.

    batched: dense graphs of one array module solved as one padded stack
    (kernels.batched_eigensolver: each sub-graph gathered to the front of its slot, the rest
    isolated padding), one device-to-host copy for all; else one solve per graph."""
    index = [np.flatnonzero(m) for m in remaining]
    if batched and len(graphs) > 1 and all(is_dense(W) for W in graphs):
        return _stacked_fiedler(graphs, index)
    out = []
    for W, idx, mask in zip(graphs, index, remaining):
        pairs = smallest_eigenpairs(subgraph(W, idx), 2)
        vec = np.zeros(mask.size, np.float32)
        vec[idx] = to_numpy(pairs.eigenvectors)[:, 1]
        out.append((float(to_numpy(pairs.eigenvalues)[1]), vec))
    return out


def _stacked_fiedler(graphs: list, index: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
    stack, sizes = pad_graphs([subgraph(W, array_module(W).asarray(idx)) for W, idx in zip(graphs, index)])
    pairs = smallest_eigenpairs_batched(stack, 2, sizes=sizes)
    vectors = to_numpy(pairs.eigenvectors[:, :, 1]).astype(np.float32)  # one copy for the batch
    values = to_numpy(pairs.eigenvalues[:, 1])
    out = []
    for j, (W, idx) in enumerate(zip(graphs, index)):
        vec = np.zeros(W.shape[0], np.float32)
        vec[idx] = vectors[j, :len(idx)]
        out.append((float(values[j]), vec))
    return out


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
    return DISCOVERY[cfg.method](eigenvectors, eigenvalues, W, cfg, first)


def discover_batch(images: list[tuple], cfg: DiscoveryConfig, batched: bool = False) -> list[list[Candidate] | Exception]:
    """discover for several images, (eigenvectors, eigenvalues, W, first) each -> each one's
    candidates, or the exception its discovery raised. The iterative cut runs in rounds across
    the batch (iterative_objects_batch; `batched`: each round's sub-graphs as one stack)."""
    if cfg.method == "iterative" and len(images) > 1:
        try:
            return iterative_objects_batch(images, cfg, batched)
        except Exception:  # one image's failure must not cost the others: each alone below
            pass
    out: list[list[Candidate] | Exception] = []
    for eigenvectors, eigenvalues, W, first in images:
        try:
            out.append(discover(eigenvectors, eigenvalues, W, cfg, first))
        except Exception as exc:
            out.append(exc)
    return out
