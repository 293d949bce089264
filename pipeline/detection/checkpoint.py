"""A trained detector on disk (any fsspec URI), one folder per round, named by its digest:

    DETECTOR/<digest>/model.pt        state_dict and what rebuilds the model (feature width, cell size)
    DETECTOR/<digest>/detector.json   config, round, the label run and images it learnt from, losses
    DETECTOR/<digest>/targets/        the next round's targets (DETECTION_SCHEMA), when there is one
    DETECTOR/final.json               which round folder `label --detector DETECTOR` uses

The digest hashes the detector's settings (but the number of rounds: round 2 of a 3-round run is
round 2 of a 2-round one), the label run's digest, the images it learnt from and the round, so
a rerun with the same inputs finds and reuses it, and anything else trains a new one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import fsspec
import torch

from pipeline.config import digest_of
from pipeline.detection.detector import MaskFCOS
from pipeline.detection.train import DetectorConfig, new_model

MODEL_FILE = "model.pt"
RECORD_FILE = "detector.json"
FINAL_FILE = "final.json"
TARGETS_DIR = "targets"


def images_digest(image_ids: list[str]) -> str:
    h = hashlib.sha256()
    for image_id in sorted(image_ids):
        h.update(image_id.encode() + b"\0")
    return h.hexdigest()[:16]


# Settings added after detectors were trained leave the digest while at these values, so those
# detectors keep their digests (as the extraction and label configs do).
_OMITTED_AT = {"max_targets": 0}


def detector_digest(cfg: DetectorConfig, label_digest: str, images: str, round_: int) -> str:
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k != "rounds" and not (k in _OMITTED_AT and v == _OMITTED_AT[k])}
    return digest_of({"detector": settings, "label_digest": label_digest, "images": images, "round": round_})


def round_uri(root: str, digest: str) -> str:
    return f"{root.rstrip('/')}/{digest}"


def write_checkpoint(uri: str, model: MaskFCOS, in_channels: int, patch_size: int, record: dict) -> None:
    """Model and record into the round folder `uri`; the record is written last, so a folder
    with a record holds a whole model."""
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "in_channels": in_channels, "patch_size": patch_size}, buffer)
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{MODEL_FILE}", "wb") as f:
        f.write(buffer.getvalue())
    with fs.open(f"{root}/{RECORD_FILE}", "w") as f:
        json.dump(record, f, indent=1)


def read_record(uri: str) -> dict | None:
    """A round folder's record, or None when it holds no finished model."""
    try:
        with fsspec.open(f"{uri.rstrip('/')}/{RECORD_FILE}", "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_checkpoint(uri: str) -> tuple[MaskFCOS, dict]:
    """A round folder -> (the detector in eval mode, its record)."""
    record = read_record(uri)
    if record is None:
        raise FileNotFoundError(f"{uri}: no trained detector there (no {RECORD_FILE})")
    with fsspec.open(f"{uri.rstrip('/')}/{MODEL_FILE}", "rb") as f:
        saved = torch.load(io.BytesIO(f.read()), map_location="cpu")
    model = new_model(saved["in_channels"], saved["patch_size"], DetectorConfig(**record["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), record


def write_final(root: str, digest: str, record: dict) -> str:
    uri = f"{root.rstrip('/')}/{FINAL_FILE}"
    with fsspec.open(uri, "w") as f:
        json.dump({"digest": digest, "uri": round_uri(root, digest), "round": record["round"]}, f, indent=1)
    return uri


def resolve(uri: str) -> str:
    """What `label --detector` names -> the round folder to load: a `train` output folder (its
    final round) or a round folder itself. FileNotFoundError with one line when it is neither."""
    uri = uri.rstrip("/") if "://" in uri else os.path.abspath(uri)  # actors elsewhere read it
    if read_record(uri) is not None:
        return uri
    try:
        with fsspec.open(f"{uri}/{FINAL_FILE}", "r") as f:
            return round_uri(uri, json.load(f)["digest"])  # beside final.json: the folder may have moved
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: not a trained detector (no {FINAL_FILE} or {RECORD_FILE}); "
                                "make one with `deep-spectral train`") from None
