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


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 2 CPUs for one test module."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
