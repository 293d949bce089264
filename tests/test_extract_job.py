"""The extraction job end to end on a local Ray cluster: real images, real shards, bad files."""
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig
from pipeline.io.schema import EIGEN_SCHEMA, ERROR_SCHEMA, eigenvectors_of
from tests.conftest import SAMPLES

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture
def input_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for img in SAMPLES.glob("*.jpg"):
        shutil.copy(img, folder / img.name)
    data = (SAMPLES / "chelsea.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all")
    return folder


def listing(folder):
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def test_extract_writes_shards_errors_and_reruns_as_noop(local_ray, input_folder, tmp_path, offline_weights):
    from jobs.extract import run_extract

    out = tmp_path / "out"
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=224), eigen=EigenConfig(k=6))
    runtime = RuntimeConfig(batch_size=4)
    summary = run_extract(str(input_folder), str(out), cfg, runtime)
    assert (summary["processed"], summary["failed"]) == (4, 3)

    eigs = pq.read_table(out / "eigs")
    assert eigs.schema.remove_metadata().equals(EIGEN_SCHEMA)
    assert sorted(eigs.column("image_id").to_pylist()) == sorted(p.name for p in SAMPLES.glob("*.jpg"))
    for row in eigs.to_pylist():
        assert row["config_digest"] == cfg.digest() and row["k"] == 6
        vals = np.array(row["eigenvalues"])
        assert abs(vals[0]) < 1e-8 and np.all(np.diff(vals) >= -1e-12) and vals[-1] < 2
        vecs = eigenvectors_of(row)
        assert max(row["grid_h"], row["grid_w"]) == 224 // 14
        assert np.allclose(vecs[0], vecs[0].flat[0]) and vecs[0].flat[0] > 0  # constant first
        np.testing.assert_allclose(np.linalg.norm(vecs.reshape(6, -1), axis=1), 1, atol=1e-5)

    errors = pq.read_table(out / "errors")
    assert errors.schema.remove_metadata().equals(ERROR_SCHEMA)
    by_id = {r["image_id"]: r for r in errors.to_pylist()}
    assert set(by_id) == {"truncated.jpg", "empty.png", "text.jpg"}
    assert "empty file" in by_id["empty.png"]["reason"]
    assert "not an image" in by_id["text.jpg"]["reason"]
    assert "truncated" in by_id["truncated.jpg"]["reason"]

    before = listing(out)
    again = run_extract(str(input_folder), str(out), cfg, runtime)
    assert (again["skipped"], again["processed"], again["failed"]) == (7, 0, 0)
    assert listing(out) == before

    # A new image is the only work of the next run.
    shutil.copy(SAMPLES / "coffee.jpg", input_folder / "coffee-copy.jpg")
    third = run_extract(str(input_folder), str(out), cfg, runtime)
    assert (third["skipped"], third["processed"]) == (7, 1)
    ids = pq.read_table(out / "eigs").column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 5
