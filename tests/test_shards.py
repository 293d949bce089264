"""Shards: schema round-trip through plain pyarrow, atomic commit, rerun bookkeeping."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import EigenConfig, ExtractConfig
from pipeline.io.schema import (CONFIG_METADATA_KEY, EIGEN_SCHEMA, eigen_row, eigen_table, eigenvectors_of,
                             error_table)
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, finished_ids, read_table, write_shard


# One generator for the module, so consecutive rows get different vectors.
ROWS_RNG = np.random.default_rng(0)


def make_row(image_id: str, digest: str, k=3, gh=4, gw=5, rng=ROWS_RNG):
    vecs = rng.normal(size=(k, gh, gw)).astype(np.float32)
    return eigen_row(
        image_id=image_id, source_uri=f"file:///data/{image_id}", image_sha256="0" * 64,
        height=70, width=56, input_height=56, input_width=70, patch_size=14,
        grid_h=gh, grid_w=gw, backbone="dinov2_vits14_offline", weights_digest="abc",
        config_digest=digest, k=k, eigenvalues=[0.0, 0.1, 0.2][:k],
        eigenvectors=vecs.ravel(), eigensolver="dense", max_residual=1e-12,
    ), vecs


def test_roundtrip_with_plain_pyarrow(tmp_path):
    cfg = ExtractConfig()
    row, vecs = make_row("a/0001.jpg", cfg.digest())
    uri = write_shard(eigen_table([row]), str(tmp_path), EIGEN_DIR, cfg.to_json())
    assert uri.endswith(".parquet")
    table = pq.read_table(tmp_path / EIGEN_DIR)
    assert table.schema.remove_metadata().equals(EIGEN_SCHEMA)
    back = table.to_pylist()[0]
    np.testing.assert_array_equal(eigenvectors_of(back), vecs)
    meta = pq.read_schema(next((tmp_path / EIGEN_DIR).glob("*.parquet"))).metadata
    assert ExtractConfig.from_dict(json.loads(meta[CONFIG_METADATA_KEY])) == cfg
    assert not list((tmp_path / EIGEN_DIR).glob("_tmp*"))


def test_float16_storage(tmp_path):
    cfg = ExtractConfig(eigen=EigenConfig(storage_dtype="float16"))
    row, vecs = make_row("x.png", cfg.digest())
    row["eigenvectors"] = vecs.astype(np.float16).ravel()
    write_shard(eigen_table([row], "float16"), str(tmp_path), EIGEN_DIR, cfg.to_json())
    back = pq.read_table(tmp_path / EIGEN_DIR).to_pandas().iloc[0].to_dict()
    np.testing.assert_allclose(eigenvectors_of(back), vecs, atol=2e-3)


def test_same_batch_rewritten_replaces_its_shard(tmp_path):
    digest = ExtractConfig().digest()
    rows = [make_row(i, digest)[0] for i in ("a", "b")]
    write_shard(eigen_table(rows), str(tmp_path), EIGEN_DIR, "{}")
    write_shard(eigen_table(rows[::-1]), str(tmp_path), EIGEN_DIR, "{}")
    assert read_table(str(tmp_path)).num_rows == 2


def test_finished_ids_by_config_digest(tmp_path):
    write_shard(eigen_table([make_row("a", "d1")[0], make_row("b", "d1")[0]]), str(tmp_path), EIGEN_DIR, "{}")
    write_shard(eigen_table([make_row("c", "d2")[0]]), str(tmp_path), EIGEN_DIR, "{}")
    write_shard(error_table([{"image_id": "z", "source_uri": "u", "config_digest": "d1", "stage": "decode",
                              "error_type": "ImageError", "reason": "empty"}]), str(tmp_path), ERROR_DIR, "{}")
    assert finished_ids(str(tmp_path), "d1") == {"a", "b"}
    assert finished_ids(str(tmp_path), "d2") == {"c"}
    assert finished_ids(str(tmp_path), "d1", ERROR_DIR) == {"z"}
    assert finished_ids(str(tmp_path / "nothing-here"), "d1") == set()


def test_fsspec_memory_filesystem():
    out = "memory://deep-spectral-test/out"
    write_shard(eigen_table([make_row("m", "d")[0]]), out, EIGEN_DIR, "{}")
    assert finished_ids(out, "d") == {"m"}


def test_schema_rejects_wrong_types():
    row, _ = make_row("a", "d")
    row["height"] = "tall"
    with pytest.raises(Exception):
        eigen_table([row])


def test_eigen_row_defaults_optional_columns_and_names_mistakes():
    row, _ = make_row("a", "d")
    assert row["n_segments"] == 0 and row["features"] is None and row["segment_map"] is None
    with pytest.raises(ValueError, match="missing.*image_sha256"):
        eigen_row(**{k: v for k, v in row.items() if k != "image_sha256"})
    with pytest.raises(ValueError, match="unknown.*eigenvector_count"):
        eigen_row(**row, eigenvector_count=3)


def test_labels_written_before_a_new_column_read_it_as_null(tmp_path):
    # A labels shard of an older version (no `soft` column) beside a new one: one scan reads
    # both with today's schema, the old rows' soft masks as null.
    import pyarrow as pa

    from pipeline.io.schema import OBJECT_SCHEMA, object_table
    from pipeline.io.shards import LABELS_DIR, scan_batches

    row = {"image_id": "a.jpg", "object": 0, "height": 4, "width": 5, "box": [0, 0, 5, 4],
           "patch_box": [0, 0, 5, 4], "score": 1.0, "area": 20, "segmentation": "x", "method": "fiedler",
           "rank": 0, "eigenvalue": 0.1, "border": 0.0, "grid_area": 1.0, "fallback": False,
           "config_digest": "d", "extract_digest": "e"}
    old_schema = pa.schema([f for f in OBJECT_SCHEMA if f.name != "soft"])
    write_shard(pa.Table.from_pylist([row], schema=old_schema), str(tmp_path), LABELS_DIR, "{}", name="part-0.parquet")
    write_shard(object_table([{**row, "image_id": "b.jpg", "soft": b"png"}]), str(tmp_path), LABELS_DIR, "{}",
                name="part-1.parquet")
    rows = [r for b in scan_batches(str(tmp_path), LABELS_DIR, ["image_id", "soft"]) for r in b.to_pylist()]
    assert rows == [{"image_id": "a.jpg", "soft": None}, {"image_id": "b.jpg", "soft": b"png"}]


def test_eigen_shards_written_before_a_new_column_read_it_as_null(tmp_path):
    # An eigen shard of an older version (no segment_patch_features; float16 eigenvectors)
    # first in shard order, beside a new one: one scan reads both, the old row's as null.
    import pyarrow as pa

    from pipeline.io.schema import eigen_schema, segment_patch_features_of
    from pipeline.io.shards import scan_batches

    old_row, vecs = make_row("a.jpg", "d")
    old_row["eigenvectors"] = vecs.astype(np.float16).ravel()
    old_schema = pa.schema([f for f in eigen_schema("float16") if f.name != "segment_patch_features"])
    write_shard(pa.Table.from_pylist([{k: v for k, v in old_row.items() if k in old_schema.names}], schema=old_schema),
                str(tmp_path), EIGEN_DIR, "{}", name="part-0.parquet")
    patches = np.arange(4 * 5 * 2, dtype=np.float16)
    new_row = {**make_row("b.jpg", "d")[0], "segment_dim": 2, "segment_patch_features": patches}
    write_shard(eigen_table([{**new_row, "eigenvectors": vecs.astype(np.float16).ravel()}], "float16"),
                str(tmp_path), EIGEN_DIR, "{}", name="part-1.parquet")
    rows = [r for b in scan_batches(str(tmp_path), EIGEN_DIR, ["image_id", "grid_h", "grid_w", "segment_dim",
                                                               "segment_patch_features"]) for r in b.to_pylist()]
    assert [r["image_id"] for r in rows] == ["a.jpg", "b.jpg"] and rows[0]["segment_patch_features"] is None
    np.testing.assert_array_equal(segment_patch_features_of(rows[1]), patches.reshape(4, 5, 2))
    with pytest.raises(ValueError, match="extract.segments.store_patches"):
        segment_patch_features_of(rows[0])


@pytest.mark.parametrize("storage_dtype", ["float32", "float16"])
def test_columnar_table_equals_the_row_by_row_table(offline_weights, storage_dtype):
    """eigen_table builds each array column from one NumPy buffer: on real extractor rows (with
    stored features, segments and their patch features, one row without features) it is the
    table pyarrow builds row by row, value for value."""
    import pyarrow as pa

    from pipeline.batch.extractor import SpectralExtractor
    from pipeline.config import BackboneConfig, SegmentsConfig
    from pipeline.io.schema import eigen_schema
    from pipeline.io.sources import list_images

    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=4, storage_dtype=storage_dtype),
                        segments=SegmentsConfig(n_segments=3, features="pool", store_patches=True),
                        store_features=True)
    rows, errors = SpectralExtractor(cfg)(list_images("samples"))
    assert len(rows) == 4 and not errors
    rows[1] = {**rows[1], "features": None, "feature_dim": None}
    columnar = eigen_table(rows, storage_dtype)
    assert columnar.equals(pa.Table.from_pylist(rows, schema=eigen_schema(storage_dtype)))
    assert columnar.column("features").null_count == 1
    np.testing.assert_array_equal(np.asarray(columnar.column("eigenvectors")[2].as_py(), np.float32),
                                  np.asarray(rows[2]["eigenvectors"], np.float32))
