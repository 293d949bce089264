"""Eigensolver candidates on real-image graphs, on this machine's CPU (~2 min).

    python -m bench.bench_eigensolve [--k 15] [--images astronaut chelsea coffee rocket] [--knn 10]

Graphs: dense W = max(f f^T, 0) over L2-normalised descriptors of the 8x8 patches of the
photos in samples/ (mean-centred RGB + grid position), at N ~ 700 and N ~ 2,800 nodes (the
backbone's features will replace these descriptors; the solver only sees W), and the same
N ~ 2,800 graphs KNN-sparsified (the pipeline's `sparsify_topk`).

For each candidate: seconds per solve (best of a few repeats, after one warm-up call, so
that NumPy's and SciPy's separate OpenBLAS thread pools do not interleave inside a timing),
the reference's time over it, and the largest eigenvalue difference from dense eigh of L
over all images. "ours" rows go through kernels.smallest_eigenpairs (residual-checked,
with its dense fallback); "raw" rows call the library directly, unchecked.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from bench.pixel_graphs import image_graph
from kernels import normalized_laplacian, smallest_eigenpairs
from pipeline.spectral.affinity import topk_graph

SIZES = (700, 2800)


# ------------------------------------------------------------------------------ candidates
# Each: (W, k) -> ascending eigenvalues of L (k,), plus a note ("" or the method that ran).

def reference(W, k):
    d = np.asarray(W.sum(axis=1)).ravel()
    D = scipy.sparse.diags(d).tocsc() if scipy.sparse.issparse(W) else np.diag(d)
    try:
        vals, _ = scipy.sparse.linalg.eigsh((D - W), k, sigma=0, which="LM", M=D)
    except RuntimeError as e:  # SuperLU on a D - W that is singular (graph in pieces)
        return np.full(k, np.nan), f"raised: {e}"
    return np.sort(vals), "nan" if not np.isfinite(vals).all() else ""


def raw_dense_eigh(W, k):
    L, _ = normalized_laplacian(W.toarray() if scipy.sparse.issparse(W) else W)
    return scipy.linalg.eigh(L, subset_by_index=[0, k - 1], check_finite=False)[0], ""


def _normalized_affinity(W):
    r = 1.0 / np.sqrt(W.sum(axis=1))
    return r[:, None] * W * r[None, :]


def raw_arpack_la(W, k):
    A = _normalized_affinity(W)
    vals = scipy.sparse.linalg.eigsh(A, k, which="LA", v0=np.ones(W.shape[0]), tol=1e-8)[0]
    return np.sort(1.0 - vals), ""


def raw_lobpcg(W, k):
    A = _normalized_affinity(W)
    X = np.random.default_rng(0).standard_normal((W.shape[0], k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vals = scipy.sparse.linalg.lobpcg(A, X, largest=True, tol=1e-6, maxiter=200)[0]
    return np.sort(1.0 - vals), ""


def raw_torch_lobpcg(W, k):
    import torch

    A = torch.from_numpy(_normalized_affinity(W))
    X = torch.from_numpy(np.random.default_rng(0).standard_normal((W.shape[0], k)))
    vals = torch.lobpcg(A, k=k, X=X, largest=True, tol=1e-6, niter=200)[0].numpy()
    return np.sort(1.0 - vals), ""


def ours(method):
    def run(W, k):
        pairs = smallest_eigenpairs(W, k, method=method)
        note = pairs.method if pairs.fallback_from is None else f"{pairs.method}<-{pairs.fallback_from}"
        return pairs.eigenvalues, note
    return run


DENSE_CANDIDATES = {
    "reference eigsh(D-W, sigma=0, M=D)": (reference, 2),
    "raw scipy eigh subset of L": (raw_dense_eigh, 2),
    "raw ARPACK eigsh(A, 'LA') f64": (raw_arpack_la, 3),
    "raw scipy lobpcg(A) f64": (raw_lobpcg, 3),
    "raw torch.lobpcg(A) f64": (raw_torch_lobpcg, 3),
    "ours method='dense'": (ours("dense"), 2),
    "ours method='lanczos' (f32)": (ours("lanczos"), 5),
    "ours method='lobpcg' (f32)": (ours("lobpcg"), 5),
    "ours method='krylov' (f32)": (ours("krylov"), 7),
    "ours method='auto'": (ours("auto"), 7),
}

# KNN-sparsified W (pipeline's sparsify_topk), where the small eigenvalues cluster near 0.
SPARSE_CANDIDATES = {
    "reference eigsh(D-W, sigma=0, M=D), sparse": (reference, 2),
    "raw scipy eigh subset of L (densified)": (raw_dense_eigh, 1),
    "ours method='lanczos' (f32)": (ours("lanczos"), 3),
    "ours method='shift_invert'": (ours("shift_invert"), 3),
    "ours method='auto'": (ours("auto"), 3),
}


def best_time(fn, W, k, repeats):
    out = fn(W, k)  # warm-up (also lets the other library's BLAS threads go idle)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(W, k)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--images", nargs="+", default=["astronaut", "chelsea", "coffee", "rocket"])
    parser.add_argument("--knn", type=int, default=10, help="neighbours per row of the sparse graphs")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        DENSE_CANDIDATES.pop("raw torch.lobpcg(A) f64")
    sections = [(f"dense W float64, N ~ {size}", {name: image_graph(name, size) for name in args.images},
                 DENSE_CANDIDATES) for size in SIZES]
    sections.append((f"KNN-sparsified W (top {args.knn} per row, symmetrised), N ~ 2800",
                     {name: topk_graph(image_graph(name, 2800), args.knn) for name in args.images},
                     SPARSE_CANDIDATES))
    for title, graphs, candidates in sections:
        report(title, graphs, candidates, args.k)


def report(title, graphs, candidates, k) -> None:
    exact = {name: raw_dense_eigh(W, k)[0] for name, W in graphs.items()}
    ns = sorted({W.shape[0] for W in graphs.values()})
    rows = []
    for label, (fn, repeats) in candidates.items():
        times, errs, notes = [], [], set()
        for name, W in graphs.items():
            t, (vals, note) = best_time(fn, W, k, repeats)
            times.append(t)
            errs.append(float(np.max(np.abs(np.asarray(vals) - exact[name]))))
            notes.add(note)
        rows.append((label, times, errs, ",".join(sorted(n for n in notes if n))))
    ref_times = np.array(rows[0][1])
    print(f"\n{title}: N = {ns[0]}..{ns[-1]}, {len(graphs)} images ({', '.join(graphs)}), k = {k}; "
          f"seconds = best of repeats, mean over images")
    print("| candidate | s / solve | reference / it | max abs eigenvalue diff vs dense eigh | ran as |")
    print("|---|---|---|---|---|")
    for label, times, errs, note in rows:
        ratio = float(np.mean(ref_times / np.array(times)))
        print(f"| {label} | {np.mean(times):.4f} | {ratio:.1f}x | {max(errs):.1e} | {note} |")


if __name__ == "__main__":
    main()
