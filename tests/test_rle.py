"""COCO compressed RLE of mask stacks (pipeline/io/rle.py) against pycocotools, string for string."""
import numpy as np
import pytest
from PIL import Image

from pipeline.io.rle import encode_masks
from tests.conftest import ROOT, gpu_available


def reference(masks: np.ndarray) -> list[str]:
    from pycocotools import mask as mask_utils  # here, not at import: the bare GPU machine lacks it

    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode("ascii") for m in masks]


def random_stacks(n: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = rng.integers(1, 90, 2)
        yield rng.random((3, h, w)) < rng.random()


def image_masks() -> np.ndarray:
    """Masks with long runs and many of them: a sample photo thresholded at four levels."""
    grey = np.asarray(Image.open(ROOT / "samples" / "coffee.jpg").convert("L"))
    return np.stack([grey > t for t in (40, 100, 160, 220)] + [np.zeros_like(grey, bool), np.ones_like(grey, bool)])


def test_identical_strings_to_pycocotools():
    for masks in random_stacks():
        assert encode_masks(masks) == reference(masks)
    masks = image_masks()
    assert encode_masks(masks) == reference(masks)
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": list(masks.shape[1:]), "counts": encode_masks(masks[:1])[0].encode()})
    assert np.array_equal(decoded.astype(bool), masks[0])


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU (the NumPy path is tested above)")
def test_identical_strings_from_masks_on_the_gpu():
    import cupy

    for masks in list(random_stacks(20)) + [image_masks()]:  # the NumPy strings are pycocotools' (above)
        assert encode_masks(cupy.asarray(masks)) == encode_masks(masks)
