"""The jobs against a real S3 API: moto's server on 127.0.0.1 (tests/s3_server.py), s3fs
pointed at it by AWS_ENDPOINT_URL, inputs and outputs under s3://. Shards must be whole or
absent with no `_tmp-` key ever committed, reruns must skip finished work, and the error
table, run records, labels and the nightly manifest must land in the bucket. The last test
cuts the server off mid-job and restores it.

Adding a job (e.g. `label`): write one test taking `s3_extraction` (an extraction with
segments under s3://, and its bucket prefix) and asserting on `keys(fs, prefix)`.
"""
import json
import os
import re
import threading
import time

import pytest
from PIL import Image

from jobs import cli
from jobs.extract import run_extract
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, read_table
from tests.conftest import SAMPLES
from tests.fault_table import report
from tests.s3_server import S3Server, keys

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytestmark = pytest.mark.ray

BUCKET = "deep-spectral-test"
EXTRACT = ["--long-side", "84", "--eigenvectors", "4", "--batch-size", "2"]
SEGMENTS = ["--segments", "3", "--set", "extract.segments.n_eigenvectors=3", "--segment-features", "pool"]
# label shows no segment flags: the same settings by name.
SEGMENT_SETTINGS = ["--set", "extract.segments.n_segments=3", "--set", "extract.segments.n_eigenvectors=3",
                    "--set", "extract.segments.features=pool"]


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield server, fs
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        server.close()


def upload_images(fs, prefix: str, n: int = 3) -> int:
    """n small sample photos and one corrupt file under s3://prefix/; returns images in."""
    for name in sorted(p.name for p in SAMPLES.glob("*.jpg"))[:n]:
        img = Image.open(SAMPLES / name)
        img.thumbnail((84, 84))  # a 6 x 6 patch grid at most
        local = f"/tmp/{os.getpid()}-{name}"
        img.save(local)
        fs.put_file(local, f"{prefix}/{name}")
        os.remove(local)
    fs.pipe_file(f"{prefix}/corrupt.jpg", (SAMPLES / "chelsea.jpg").read_bytes()[:2000])
    return n + 1


@pytest.fixture(scope="module")
def s3_extraction(s3, offline_weights):
    """`deep-spectral extract` on a local Ray, s3:// in and out, with segments."""
    import ray

    _, fs = s3
    n = upload_images(fs, f"{BUCKET}/images")
    out = f"s3://{BUCKET}/run"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert cli.main(["extract", f"s3://{BUCKET}/images", "--out", out, *EXTRACT, *SEGMENTS]) == 0
        yield out, n
    finally:
        ray.shutdown()


def test_extract_on_ray_writes_whole_shards_errors_and_runs_to_the_bucket(s3, s3_extraction):
    _, fs = s3
    out, n = s3_extraction
    stored = keys(fs, f"{BUCKET}/run")
    assert not [k for k in stored if "/_tmp-" in k or "/_attempts/" in k or k.endswith("_lease.json")]
    rows = read_table(out, EIGEN_DIR, columns=["image_id", "n_segments"]).to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(p.name for p in SAMPLES.glob("*.jpg"))[:n - 1]
    assert all(r["n_segments"] >= 1 for r in rows)
    [error] = read_table(out, ERROR_DIR).to_pylist()
    assert (error["image_id"], error["stage"]) == ("corrupt.jpg", "decode")
    [run] = [k for k in stored if "/runs/" in k]
    record = json.loads(fs.cat_file(run))
    assert (record["processed"], record["failed"], record["mode"]) == (n - 1, 1, "ray")
    report("none (S3, Ray)", n, out)

    # A rerun lists the bucket, finds every image done and writes nothing.
    assert cli.main(["extract", f"s3://{BUCKET}/images", "--out", out, *EXTRACT, *SEGMENTS]) == 0
    assert keys(fs, f"{BUCKET}/run") == stored


def test_cluster_task_reads_and_writes_the_bucket(s3, s3_extraction):
    _, fs = s3
    out, n = s3_extraction
    labels = f"s3://{BUCKET}/labels"
    # Ray is still up from the extraction: this runs as the Ray task, as on a cluster.
    assert cli.main(["cluster", out, "--out", labels, "--clusters", "2"]) == 0
    stored = keys(fs, f"{BUCKET}/labels")
    pngs = sorted(k.rsplit("/", 1)[1] for k in stored if "/labels/labels/" in k)
    assert pngs == sorted(p.stem + ".png" for p in SAMPLES.glob("*.jpg"))[:n - 1]
    record = json.loads(fs.cat_file(f"{BUCKET}/labels/cluster.json"))
    assert record["n_images"] == n - 1 and record["n_failed"] == 0
    assert any("/segment_labels/part-" in k for k in stored) and f"{BUCKET}/labels/clusters.npz" in stored


def test_label_on_ray_reads_and_writes_the_bucket(s3, s3_extraction):
    """label over the extraction's images into its OUT: the eigen rows are reused, objects,
    instances.json (categories from a cluster run in the bucket) and the gallery land in the
    bucket, a rerun writes nothing."""
    from pycocotools.coco import COCO

    _, fs = s3
    out, n = s3_extraction
    clusters = f"s3://{BUCKET}/label-clusters"
    assert cli.main(["cluster", out, "--out", clusters, "--clusters", "2"]) == 0
    eigen_keys = {k for k in keys(fs, f"{BUCKET}/run") if "/eigs/" in k}
    label = ["label", f"s3://{BUCKET}/images", "--out", out, *EXTRACT, *SEGMENT_SETTINGS, "--max-objects", "2",
             "--gallery", "2", "--categories", clusters]
    assert cli.main(label) == 0
    stored = keys(fs, f"{BUCKET}/run")
    assert not [k for k in stored if "/_tmp-" in k or ".tmp-" in k]
    assert {k for k in stored if "/eigs/" in k} == eigen_keys  # every image already had its row
    objects = read_table(out, "labels", columns=["image_id", "object"]).to_pylist()
    assert sorted({r["image_id"] for r in objects}) == sorted(p.name for p in SAMPLES.glob("*.jpg"))[:n - 1]
    local = f"/tmp/{os.getpid()}-instances.json"
    fs.get_file(f"{BUCKET}/run/instances.json", local)
    coco = COCO(local)
    os.remove(local)
    assert len(coco.getAnnIds()) == len(objects) and len(coco.getImgIds()) == n - 1
    assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == {1, 2, 3}  # 2 clusters + unassigned
    assert f"{BUCKET}/run/gallery/index.html" in stored
    page = fs.cat_file(f"{BUCKET}/run/gallery/index.html").decode()
    thumbs = sorted(k.split("/run/gallery/", 1)[1] for k in stored if "/run/gallery/thumbs/" in k)
    panels = [k for k in stored if "/run/gallery/panels/" in k]
    # --gallery 2 samples from every listed image, the unreadable one too: a panel per labelled one.
    assert 1 <= len(thumbs) == len(panels) <= 2 and sorted(re.findall(r'src="([^"]*)"', page)) == thumbs
    assert cli.main(label) == 0
    assert keys(fs, f"{BUCKET}/run") == stored


def test_nightly_over_s3_versions_and_skips(s3, offline_weights):
    _, fs = s3
    n = upload_images(fs, f"{BUCKET}/nightly-in", n=2)
    argv = ["nightly", f"s3://{BUCKET}/nightly-in", "--out-root", f"s3://{BUCKET}/nightly", "--local", *EXTRACT]
    assert cli.main(argv) == 0
    manifest = json.loads(fs.cat_file(f"{BUCKET}/nightly/manifest.json"))
    [(version, entry)] = manifest["versions"].items()
    assert (entry["images"], entry["failed"]) == (n - 1, 1)
    stored = keys(fs, f"{BUCKET}/nightly/{version}")
    assert any("/runs/" in k for k in stored) and any("/errors/part-" in k for k in stored)
    assert not [k for k in keys(fs, f"{BUCKET}/nightly") if "_tmp-" in k]

    assert cli.main(argv) == 0
    entry = json.loads(fs.cat_file(f"{BUCKET}/nightly/manifest.json"))["versions"][version]
    assert [(r["processed"], r["skipped"]) for r in entry["runs"]] == [(n - 1, 0), (0, n)]
    assert keys(fs, f"{BUCKET}/nightly/{version}") == stored


def test_store_outage_mid_job_is_waited_out(s3, offline_weights):
    """The relay to the server is cut after the first shard and restored 20 s later (longer
    than botocore's own retries): the job must stall, then finish with nothing lost or doubled."""
    server, fs = s3
    n = upload_images(fs, f"{BUCKET}/outage-in", n=4)
    out = f"s3://{BUCKET}/outage"
    direct = server.direct_fs()
    at_cut = {}

    def outage():
        deadline = time.time() + 300
        while time.time() < deadline and not at_cut:
            shards = [k for k in keys(direct, f"{BUCKET}/outage") if "/eigs/part-" in k]
            if shards:
                at_cut["shards"] = len(shards)
                server.relay.stop()
                time.sleep(20)
                server.relay.start()
            time.sleep(0.1)

    cutter = threading.Thread(target=outage)
    cutter.start()
    # In this process, so that the cut hits the job's own reads and commits.
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=84), eigen=EigenConfig(k=4))
    started = time.time()
    summary = run_extract(f"s3://{BUCKET}/outage-in", out, cfg, RuntimeConfig(batch_size=1), local=True)
    cutter.join()
    assert at_cut and at_cut["shards"] < n - 1, "the outage did not fall mid-job"
    assert time.time() - started > 20  # the job waited the outage out
    assert (summary["processed"], summary["failed"]) == (n - 1, 1)
    line = report("S3 outage 20 s mid-job (in-process)", n, out, shards_at_cut=at_cut["shards"])
    assert (line["rows_out"], line["error_rows"], line["duplicates"]) == (n - 1, 1, 0)
