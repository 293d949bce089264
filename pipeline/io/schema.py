"""The one place that defines what the Parquet shards hold.

Plain Arrow types only (no Ray tensor extension), so shards read back as ordinary columns in
pyarrow, pandas or DuckDB without Ray installed. Arrays are stored flat, row-major, with their
shape in sibling columns:

    eigenvectors: K × (grid_h · grid_w), eigenvector i of patch (r, c) at i·N + r·grid_w + c
    features:     (grid_h · grid_w) × feature_dim, present only with store_features
    segment_map:  grid_h × grid_w segment labels (0 = background, 1..n_segments), present
                  only with segments (pipeline.semantic.segments); then also
    segment_boxes: n_segments × 4 pixel boxes [x0, y0, x1, y1] of segments 1..n
    segment_features: n_segments × segment_dim, the features the dataset-wide clustering reads
    segment_patch_features: (grid_h · grid_w) × segment_dim float16, the pooled kinds' feature of
                  every patch, present only with SegmentsConfig.store_patches

The full run configuration (JSON) is in each file's metadata under b"deep_spectral.config";
`config_digest` on every row says which configuration produced it.
"""
from __future__ import annotations

import traceback

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CONFIG_METADATA_KEY = b"deep_spectral.config"

EIGEN_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("input_height", pa.int32(), nullable=False),
        pa.field("input_width", pa.int32(), nullable=False),
        pa.field("patch_size", pa.int32(), nullable=False),
        pa.field("grid_h", pa.int32(), nullable=False),
        pa.field("grid_w", pa.int32(), nullable=False),
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("weights_digest", pa.string(), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("eigenvalues", pa.list_(pa.float64()), nullable=False),
        pa.field("eigenvectors", pa.large_list(pa.float32()), nullable=False),
        pa.field("eigensolver", pa.string(), nullable=False),
        pa.field("max_residual", pa.float64(), nullable=False),
        pa.field("feature_dim", pa.int32(), nullable=True),
        pa.field("features", pa.large_list(pa.float32()), nullable=True),
        pa.field("n_segments", pa.int32(), nullable=False),
        pa.field("segment_map", pa.large_list(pa.int16()), nullable=True),
        pa.field("segment_boxes", pa.list_(pa.float32()), nullable=True),
        pa.field("segment_dim", pa.int32(), nullable=True),
        pa.field("segment_features", pa.large_list(pa.float32()), nullable=True),
        # Added after shards were written: older shards lack the column (read as null).
        pa.field("segment_patch_features", pa.large_list(pa.float16()), nullable=True),
    ]
)

SEGMENT_COLUMNS = ["n_segments", "segment_map", "segment_boxes", "segment_dim", "segment_features"]

ERROR_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


# One row per foreground segment: its dataset-wide class (cluster + 1; 0 is background).
SEGMENT_LABEL_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),  # the clustering run's digest
        pa.field("extract_digest", pa.string(), nullable=False),  # the shards it read
    ]
)

# One row per region of an image whose regions were re-embedded (pipeline.semantic.region_crops):
# the segments sharing label `label` under the first clustering, their box's crop embedded
# (joined with their pooled features, as the run's config says). An image without a foreground
# region has one row with label 0 and no feature, so a rerun knows it was done.
REGION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),  # the segments' class under the first clustering
        pa.field("cells", pa.int32(), nullable=False),  # grid cells the region covers
        pa.field("box", pa.list_(pa.float32(), 4), nullable=True),  # [x0, y0, x1, y1] pixels
        pa.field("feature_dim", pa.int32(), nullable=True),
        pa.field("feature", pa.list_(pa.float32()), nullable=True),
        pa.field("config_digest", pa.string(), nullable=False),  # the regions' digest (PseudoLabelConfig)
        pa.field("extract_digest", pa.string(), nullable=False),  # the shards they came from
    ]
)

# One row per image of a self-training head's second network (pipeline.semantic.head_maps): its
# dense feature map over the area the graph's cells cover, (feature_dim, map_h, map_w) row-major.
HEAD_MAP_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("map_h", pa.int32(), nullable=False),
        pa.field("map_w", pa.int32(), nullable=False),
        pa.field("feature_dim", pa.int32(), nullable=False),
        pa.field("feature_map", pa.large_list(pa.float16()), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),  # the maps' digest (HeadMapConfig)
        pa.field("extract_digest", pa.string(), nullable=False),  # the shards they came from
    ]
)

# The labels table of `deep-spectral label`: one row per object found in an image (every
# labelled image has at least one: its Fiedler object, score 0 when that fell back to the
# whole image). `segmentation` is COCO compressed RLE counts at (height, width).
OBJECT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("object", pa.int32(), nullable=False),  # 0 = best score in its image
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),  # [x0, y0, x1, y1] pixels
        pa.field("patch_box", pa.list_(pa.float32(), 4), nullable=False),  # of the patch mask
        pa.field("score", pa.float64(), nullable=False),
        pa.field("area", pa.int64(), nullable=False),  # mask pixels
        pa.field("segmentation", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),  # how it was found (discovery method)
        pa.field("rank", pa.int32(), nullable=False),  # order of discovery, 0 = the Fiedler object
        pa.field("eigenvalue", pa.float64(), nullable=False),  # of the cut that found it
        pa.field("border", pa.float64(), nullable=False),  # share of the grid border it covers
        pa.field("grid_area", pa.float64(), nullable=False),  # share of the grid it covers
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("config_digest", pa.string(), nullable=False),  # the label run's digest
        pa.field("extract_digest", pa.string(), nullable=False),  # the eigenvectors it used
        # The refined mask before its 0.5 threshold, 8-bit PNG (pipeline.io.soft_masks); null
        # unless the run asked for soft masks (LabelConfig.soft_masks). Added after labels were
        # first written: readers scan with this schema, so older shards read it as null.
        pa.field("soft", pa.binary(), nullable=True),
        # Where the object came from: "cut" (the spectral cuts) or "detector" (a detector trained on
        # a label run, `label --detector`), and the detector's self-training round (0 for cuts).
        # Added after labels were first written: older shards read null (they hold cuts).
        pa.field("source", pa.string(), nullable=True),
        pa.field("round", pa.int32(), nullable=True),
    ]
)

# A detector's training targets for its next self-training round (`deep-spectral train`): one
# row per object, the detections it kept merged with the cuts (pipeline.detection.samples).
DETECTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("object", pa.int32(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),  # [x0, y0, x1, y1] original pixels
        pa.field("segmentation", pa.string(), nullable=False),  # COCO RLE counts
        pa.field("config_digest", pa.string(), nullable=False),  # the detector's (its round's) digest
    ]
)

# The mattes table of `deep-spectral matte`: one row per matted image, its alpha, cut-out and
# automatic trimap as PNG bytes (the OUT/STEM.*.png files are written from these).
MATTE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),  # of the image file's bytes
        pa.field("config_digest", pa.string(), nullable=False),  # the matte run's (matte_digest)
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("trimap_uri", pa.string(), nullable=True),  # the given trimap; null in automatic mode
        pa.field("alpha", pa.binary(), nullable=False),  # 8-bit greyscale PNG, round(255 alpha)
        # RGBA PNG: the estimated foreground with straight alpha; null without foreground estimation.
        pa.field("rgba", pa.binary(), nullable=True),
        pa.field("trimap", pa.binary(), nullable=True),  # the automatic trimap, PNG 0/128/255; null when given
        pa.field("seconds", pa.float64(), nullable=False),  # the method's wall time (not reading, not writing)
        pa.field("info", pa.string(), nullable=False),  # JSON: seconds per stage, solver iterations, work size
    ]
)


def eigen_schema(storage_dtype: str = "float32") -> pa.Schema:
    """EIGEN_SCHEMA with eigenvectors stored as float32 or float16 (half the bytes;
    pyarrow and pandas read it, DuckDB does not know Arrow's half float)."""
    if storage_dtype == "float32":
        return EIGEN_SCHEMA
    if storage_dtype == "float16":
        index = EIGEN_SCHEMA.get_field_index("eigenvectors")
        return EIGEN_SCHEMA.set(index, pa.field("eigenvectors", pa.large_list(pa.float16()), nullable=False))
    raise ValueError(f"storage_dtype must be 'float32' or 'float16', got {storage_dtype!r}")


def eigenvectors_of(row: dict) -> np.ndarray:
    """A row as read back (pyarrow `to_pylist` or pandas) -> eigenvectors (K, grid_h, grid_w)."""
    flat = np.asarray(row["eigenvectors"], dtype=np.float32)
    return flat.reshape(row["k"], row["grid_h"], row["grid_w"])


def features_of(row: dict) -> np.ndarray:
    """A row with stored features -> (grid_h, grid_w, feature_dim) float32."""
    if row.get("features") is None:
        raise ValueError(f"{row['image_id']}: shard was written without store_features")
    flat = np.asarray(row["features"], dtype=np.float32)
    return flat.reshape(row["grid_h"], row["grid_w"], row["feature_dim"])


def segment_patch_features_of(row: dict) -> np.ndarray:
    """A row with stored segment patch features -> (grid_h, grid_w, C) float32, C the joined
    width of the segments' pooled kinds (segment_dim, unless crops are joined into the segments)."""
    if row.get("segment_patch_features") is None:
        raise ValueError(f"{row['image_id']}: shard was written without the segments' patch features "
                         "(extract.segments.store_patches)")
    flat = np.asarray(row["segment_patch_features"], dtype=np.float32)
    return flat.reshape(row["grid_h"], row["grid_w"], -1)


# Columns a row may leave out: features without store_features, segments without --segments.
OPTIONAL_DEFAULTS = {"feature_dim": None, "features": None, "n_segments": 0, "segment_map": None,
                     "segment_boxes": None, "segment_dim": None, "segment_features": None,
                     "segment_patch_features": None}


def eigen_row(**columns) -> dict:
    """One shard row: every required column of EIGEN_SCHEMA given, the optional ones defaulted."""
    unknown = set(columns) - set(EIGEN_SCHEMA.names)
    missing = set(EIGEN_SCHEMA.names) - set(columns) - set(OPTIONAL_DEFAULTS)
    if unknown or missing:
        raise ValueError(f"shard row: unknown columns {sorted(unknown)}, missing {sorted(missing)}")
    return {**OPTIONAL_DEFAULTS, **columns}


def segments_of(row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A row with segments -> (segment_map (grid_h, grid_w) int16, boxes (n, 4), features (n, D))."""
    if row.get("segment_map") is None:
        raise ValueError(f"{row['image_id']}: shard was written without segments (--segments N)")
    n = row["n_segments"]
    labels = np.asarray(row["segment_map"], dtype=np.int16).reshape(row["grid_h"], row["grid_w"])
    boxes = np.asarray(row["segment_boxes"], dtype=np.float32).reshape(n, 4)
    features = np.asarray(row["segment_features"], dtype=np.float32).reshape(n, row["segment_dim"] or 0)
    return labels, boxes, features


def eigen_table(records: list[dict], storage_dtype: str = "float32") -> pa.Table:
    """Rows built by pipeline.batch.extractor -> a table in the shard schema, column by column
    (columnar_table: the arrays go in as NumPy buffers, not element by element)."""
    return columnar_table(records, eigen_schema(storage_dtype))


def columnar_table(records: list[dict], schema: pa.Schema) -> pa.Table:
    """Row dicts -> a table of `schema`, each list column made from one concatenated NumPy
    buffer and its offsets (the rows' arrays, or lists, or None for a null), each other column
    from its Python values. The same table as pa.Table.from_pylist, several times faster for
    rows of large arrays (bench/bench_label_cost.py)."""
    columns = []
    for field in schema:
        values = [r.get(field.name) for r in records]
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            columns.append(_list_column(values, field.type))
        else:
            columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _list_column(values: list, list_type: pa.DataType) -> pa.Array:
    """Row values (arrays, sequences or None) -> one list array of `list_type`."""
    dtype = list_type.value_type.to_pandas_dtype()
    arrays = [None if v is None else np.asarray(v, dtype=dtype).ravel() for v in values]
    lengths = np.array([0 if a is None else a.size for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.concatenate([a for a in arrays if a is not None]) if any(a is not None for a in arrays) \
        else np.zeros(0, dtype)
    mask = pa.array([a is None for a in arrays]) if any(a is None for a in arrays) else None
    cls = pa.LargeListArray if pa.types.is_large_list(list_type) else pa.ListArray
    offsets = pa.array(offsets, type=pa.int64() if cls is pa.LargeListArray else pa.int32())
    return cls.from_arrays(offsets, pa.array(flat, type=list_type.value_type), type=list_type, mask=mask)


def error_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=ERROR_SCHEMA)


def exception_error_row(row: dict, config_digest: str, stage: str, exc: BaseException) -> dict:
    """An ERROR_SCHEMA row for a shard row (image_id, source_uri if known) that `stage` failed on:
    the exception's type and its one-line message, cut to 2,000 characters."""
    reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"image_id": row["image_id"], "source_uri": row.get("source_uri") or "", "config_digest": config_digest,
            "stage": stage, "error_type": type(exc).__name__, "reason": reason[:2000]}


def object_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=OBJECT_SCHEMA)


def detection_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=DETECTION_SCHEMA)


def matte_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=MATTE_SCHEMA)


def region_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=REGION_SCHEMA)


def head_map_table(records: list[dict]) -> pa.Table:
    """Rows with feature_map as a (feature_dim, map_h, map_w) array -> a HEAD_MAP_SCHEMA table."""
    maps = [np.asarray(r["feature_map"], np.float16).ravel() for r in records]
    columns = {name: [r[name] for r in records] for name in HEAD_MAP_SCHEMA.names if name != "feature_map"}
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in maps])]).astype(np.int64)
    values = pa.array(np.concatenate(maps) if maps else np.zeros(0, np.float16))
    columns["feature_map"] = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pa.Table.from_pydict(columns, schema=HEAD_MAP_SCHEMA)


def segment_label_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=SEGMENT_LABEL_SCHEMA)


def list_rows(column) -> list[np.ndarray | None]:
    """A list<float> Arrow column -> one NumPy array (a view) per row, None where null: lists of
    floats cost more as Python lists (to_pylist) than reading them."""
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
    ends = np.cumsum(lengths)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [values[e - n:e] if ok else None for e, n, ok in zip(ends, lengths, valid)]
