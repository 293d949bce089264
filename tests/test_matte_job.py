"""`deep-spectral matte` end to end on a local Ray cluster: automatic trimaps for the 4 photos
and a corrupt file, its rows, PNG files and error row, the exit status, and a rerun that
writes nothing."""
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.io.schema import MATTE_SCHEMA
from tests.conftest import SAMPLES, samples_with_a_corrupt_file

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def listing(folder):
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def test_matte_on_ray_writes_rows_files_and_an_error_row_and_reruns_as_noop(local_ray, tmp_path, offline_weights):
    from jobs import runner
    from jobs.matte import cli

    folder = samples_with_a_corrupt_file(tmp_path / "images")
    out = tmp_path / "out"
    run = [str(folder), "--out", str(out), "--long-side", "224", "--max-side", "96", "--batch-size", "3",
           "--summary", str(tmp_path / "summary.json")]
    assert cli(run) == 0  # 1 of 5 failed: within the default --max-failures (10,1%)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["processed"], summary["failed"], summary["status"], summary["mode"]) == (4, 1, "ok", "ray")
    assert runner.exit_status(summary) == 0 and summary["trimaps"] == "automatic"
    assert summary["files_written"] == 12 and summary["seconds_per_image"]["seconds_trimap"] > 0
    assert summary["run_file"].endswith(".json") and len(list((out / "runs").iterdir())) == 1

    table = pq.read_table(out / "mattes")
    assert table.schema.remove_metadata().equals(MATTE_SCHEMA)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    names = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert sorted(rows) == names
    for name in names:
        image = np.asarray(Image.open(folder / name))
        stem = name.rsplit(".", 1)[0]
        alpha = np.asarray(Image.open(out / f"{stem}.alpha.png"))
        assert alpha.dtype == np.uint8 and alpha.shape == image.shape[:2]  # 8 bits: values in 0..255
        assert 0 < alpha.mean() < 255  # foreground and background both found
        np.testing.assert_array_equal(alpha, np.asarray(Image.open(io.BytesIO(rows[name]["alpha"]))))
        rgba = np.asarray(Image.open(out / f"{stem}.rgba.png"))
        assert rgba.shape == (*image.shape[:2], 4)
        np.testing.assert_array_equal(rgba[..., 3], alpha)
        trimap = np.asarray(Image.open(out / f"{stem}.trimap.png"))
        assert trimap.shape == image.shape[:2] and set(np.unique(trimap)) == {0, 128, 255}
        row = rows[name]
        assert (row["height"], row["width"]) == image.shape[:2] and row["trimap_uri"] is None
        assert row["config_digest"] == summary["config_digest"] and len(row["image_sha256"]) == 64
        assert max(json.loads(row["info"])["work_size"]) == 96  # solved at --max-side
    errors = pq.read_table(out / "errors").to_pylist()
    assert [e["image_id"] for e in errors] == ["corrupt.jpg"]
    assert errors[0]["config_digest"] == summary["config_digest"] and errors[0]["stage"] == "decode"
    assert summary["errors"][0]["image_id"] == "corrupt.jpg"

    before = listing(out)
    assert cli(run) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert (again["skipped"], again["processed"], again["failed"], again["files_written"]) == (5, 0, 0, 0)
    assert listing(out) == before  # no new shard, file or run record
