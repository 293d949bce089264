import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; skips only where ../shared is absent."""
    if not (ROOT.parent / "shared").exists():
        pytest.skip("../shared is absent (benchmark data lives there)")
    path = SHARED_DATA.joinpath(*parts)
    assert path.exists(), f"{path} missing although ../shared exists"
    return path


def samples_with_a_corrupt_file(folder: Path) -> Path:
    """The four sample photos and corrupt.jpg (a truncated JPEG) in `folder`: a set in which one
    image must become an error row and every other one be processed."""
    import shutil

    folder.mkdir()
    for img in SAMPLES.glob("*.jpg"):
        shutil.copy(img, folder / img.name)
    (folder / "corrupt.jpg").write_bytes((SAMPLES / "chelsea.jpg").read_bytes()[:500])
    return folder


@pytest.fixture(scope="session")
def sample_image() -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / "chelsea.jpg").convert("RGB"))


@pytest.fixture(scope="session")
def offline_weights() -> Path:
    from pipeline.features.offline_weights import ensure_offline_weights

    home = os.environ.get("DEEP_SPECTRAL_HOME", str(Path.home() / ".cache" / "deep-spectral"))
    return ensure_offline_weights(home)


def gpu_available() -> bool:
    """CuPy installed and a CUDA device present (GPU tests skip otherwise, saying so)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


# A planted scene: images of 64 x 96 px (4 x 6 cells of 16 px), grey, with one object of 3 x 3
# cells in the bottom rows, red (class 1) for even i and blue (class 2) for odd i, at column i % 4.
OBJECT_COLOURS = {1: (200, 40, 40), 2: (40, 40, 200)}


def planted_object_image(folder: Path, i: int) -> tuple[Path, int, int]:
    """Image i of the planted scene, saved as folder/im{i}.png -> (path, class, column)."""
    cls, col = 1 + i % 2, i % 4
    image = np.full((64, 96, 3), 128, np.uint8)
    image[16:64, 16 * col:16 * (col + 3)] = OBJECT_COLOURS[cls]
    path = folder / f"im{i}.png"
    Image.fromarray(image).save(path)
    return path, cls, col


def planted_row(path: Path, **columns) -> dict:
    """A shard row of a planted image (its grid, source and checksum; no spectrum), with
    `columns` (segments, features) given."""
    import hashlib

    from pipeline.io.schema import eigen_row

    return eigen_row(
        image_id=path.stem, source_uri=str(path), image_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        height=64, width=96, input_height=64, input_width=96, patch_size=16, grid_h=4, grid_w=6,
        backbone="planted", weights_digest="-", config_digest="planted", k=1, eigenvalues=[0.0],
        eigensolver="-", max_residual=0.0, eigenvectors=np.zeros(24, np.float32), **columns)


@pytest.fixture(scope="session")
def segment_sample_shards(tmp_path_factory, offline_weights):
    """The samples (copied, so a test can remove one for a while) extracted with 4 pooled
    segments and every patch's features stored -> (root: images/ and shards/, ExtractConfig)."""
    import shutil

    from jobs.extract import run_extract
    from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig, SegmentsConfig

    root = tmp_path_factory.mktemp("segment_samples")
    images = root / "images"
    shutil.copytree(SAMPLES, images)
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6), store_features=True,
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool"))
    run_extract(str(images), str(root / "shards"), cfg, RuntimeConfig(batch_size=4), local=True)
    return root, cfg


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 2 CPUs for one test module."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
