"""Per-image spectrum: sign convention and the Fiedler vector on a real image."""
import numpy as np

from pipeline.spectral.spectrum import border_mask, orient_by_border


def blob_vectors() -> np.ndarray:
    yy, xx = np.mgrid[:12, :16]
    inside = (yy - 6) ** 2 + (xx - 8) ** 2 < 12
    fiedler = np.where(inside, 1.0, -0.3)
    return np.stack([np.full((12, 16), 0.1), fiedler, -fiedler]), inside


def test_border_mask():
    m = border_mask(3, 4)
    assert m.sum() == 10 and not m[1, 1] and not m[1, 2]


def test_orientation_makes_the_object_positive_whatever_the_input_sign():
    vecs, inside = blob_vectors()
    out = orient_by_border(vecs)
    for v in out[1:]:
        assert (v[inside] > 0).all() and (v[~inside] < 0).all()
    np.testing.assert_array_equal(out[0], vecs[0])  # constant vector untouched
    np.testing.assert_array_equal(orient_by_border(out), out)  # idempotent


def test_orientation_tie_break_is_deterministic():
    v = np.zeros((2, 4, 4))
    v[1, 1, 1], v[1, 2, 2] = 0.9, -0.2  # nothing on the border: sign of the largest entry
    assert orient_by_border(v)[1, 1, 1] > 0
    assert orient_by_border(-v)[1, 1, 1] > 0
