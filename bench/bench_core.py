"""Prints docs/extract.md's "Performance of the spectral core" table: per-image cost on real images.

    python -m bench.bench_core [--data-root DATA] [--images 20] [--eigenvectors 15]

DATA holds ecssd/images (without it, the photos in samples/).

For each image: backbone forward, graph, our eigensolve, the reference eigensolve
(dense W and D, `eigsh(D - W, k, sigma=0, which="LM", M=D)`) on the same graph, and the shard
write; at the default grid (upsample 1) and at twice the resolution (upsample 2, the
reference's 8 px cells for a /16 model). Prints medians, the reference/ours ratio and the
share of the forward pass that everything after it costs.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.linalg
import scipy.sparse.linalg

from kernels import smallest_eigenpairs
from pipeline.spectral.affinity import image_affinity
from pipeline.features.backbones import create_backbone
from pipeline.config import ExtractConfig, GraphConfig
from pipeline.io.images import decode_image
from pipeline.io.schema import eigen_row, eigen_table
from pipeline.spectral.spectrum import orient_by_border

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kw):
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def reference_eigsh(W: np.ndarray, k: int) -> np.ndarray:
    W = W.astype(np.float64)
    D = np.diag(W.sum(axis=1))
    vals, _ = scipy.sparse.linalg.eigsh(D - W, k, sigma=0, which="LM", M=D)
    return np.sort(vals)


def write_row(spectrum_vals, vecs, cfg) -> None:
    k, h, w = vecs.shape
    row = eigen_row(image_id="x", source_uri="x", image_sha256="0" * 64, height=1, width=1,
                    input_height=1, input_width=1, patch_size=14, grid_h=h, grid_w=w, backbone="b",
                    weights_digest="w", config_digest="c", k=k, eigenvalues=list(spectrum_vals),
                    eigenvectors=vecs.astype(np.float32).ravel(), eigensolver="x", max_residual=0.0)
    pq.write_table(eigen_table([row]), io.BytesIO(), compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", metavar="DATA", default=str(ROOT.parent / "shared" / "data"),
                        help="the folder holding ecssd/images")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--eigenvectors", dest="k", type=int, default=15, help="eigenpairs per image")
    args = parser.parse_args()
    paths = sorted((Path(args.data_root) / "ecssd" / "images").glob("*.jpg"))[: args.images] or sorted((ROOT / "samples").glob("*.jpg"))
    cfg = ExtractConfig()
    backbone = create_backbone(cfg.backbone.name, resize=cfg.backbone.long_side)
    backbone([decode_image((ROOT / "samples" / "chelsea.jpg").read_bytes())])  # warm-up
    results = {1: [], 2: []}
    graphs = {1: [], 2: []}
    for path in paths:
        image = decode_image(path.read_bytes())
        (out,), t_forward = timed(backbone, [image])
        for factor in (1, 2):
            h, w = out.features.shape[0] * factor, out.features.shape[1] * factor
            W, t_graph = timed(image_affinity, out.features, image, GraphConfig(upsample=factor))
            pairs, t_eig = timed(smallest_eigenpairs, W, args.k)
            vecs = orient_by_border(pairs.eigenvectors.T.reshape(-1, h, w))
            _, t_write = timed(write_row, pairs.eigenvalues, vecs, cfg)
            results[factor].append(dict(n=h * w, forward=t_forward, graph=t_graph, eig=t_eig,
                                        write=t_write, method=pairs.method, vals=pairs.eigenvalues))
            graphs[factor].append(W)
    # The reference (SciPy) runs in a pass of its own: NumPy and SciPy wheels ship separate
    # OpenBLAS copies, and alternating between them slows both.
    for factor, rows in results.items():
        for row, W in zip(rows, graphs[factor]):
            ref_vals, row["ref"] = timed(reference_eigsh, W, args.k)
            dense_vals = dense_eigenvalues(W, args.k)
            row["err"] = float(np.abs(row["vals"] - dense_vals).max())
            row["ref_err"] = float(np.abs(ref_vals - dense_vals).max()) if np.all(np.isfinite(ref_vals)) else np.inf
    print(f"{len(paths)} images from {paths[0].parent}, backbone {cfg.backbone.name} at long side "
          f"{cfg.backbone.long_side}, k={args.k}; medians in milliseconds\n")
    header = ("grid", "N", "forward", "graph", "eig (ours)", "eig (ref)", "ref/ours", "write",
              "post/forward", "max |dλ| ours", "max |dλ| ref", "methods")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for factor, rows in results.items():
        med = {key: float(np.median([r[key] for r in rows])) for key in ("n", "forward", "graph", "eig", "ref", "write")}
        post = med["graph"] + med["eig"] + med["write"]
        methods = ",".join(sorted({r["method"] for r in rows}))
        print(f"| x{factor} | {med['n']:.0f} | {1e3 * med['forward']:.0f} | {1e3 * med['graph']:.1f} | "
              f"{1e3 * med['eig']:.1f} | {1e3 * med['ref']:.1f} | {med['ref'] / med['eig']:.1f}x | "
              f"{1e3 * med['write']:.1f} | {100 * post / med['forward']:.0f}% | "
              f"{max(r['err'] for r in rows):.1e} | {max(r['ref_err'] for r in rows):.1e} | {methods} |")


def dense_eigenvalues(W: np.ndarray, k: int) -> np.ndarray:
    W = W.astype(np.float64)
    d = W.sum(axis=1)
    s = 1 / np.sqrt(d)
    L = np.eye(len(d)) - s[:, None] * W * s[None, :]
    return scipy.linalg.eigh(L, eigvals_only=True, subset_by_index=[0, k - 1])


if __name__ == "__main__":
    main()
