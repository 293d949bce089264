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
