"""Run bookkeeping without Ray: the progress meter, run summaries, per-batch shard commits, and
both in an in-process extraction."""
import json
from datetime import datetime, timezone

from tests.synthetic_images import write_synthetic_jpegs
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig
from pipeline.io.progress import Progress
from pipeline.io.runlog import RUNS_DIR, write_run_summary
from pipeline.io.schema import eigen_table, error_table
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, commit_batch, read_table
from tests.test_shards import make_row


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_rate_and_eta():
    clock = FakeClock()
    progress = Progress(total=100, every=10, clock=clock)
    clock.now += 5
    assert progress.update(8, 2) is None  # too soon after the start
    clock.now += 5
    line = progress.update(10, 0)  # 10 more in the 5 s since the first batch
    assert line == ("progress: 20/100 images (20%), 18 ok, 2 failed, 2.00 images/s, "
                    "elapsed 10s, ETA 40s")
    clock.now += 1
    assert progress.update(10, 0) is None
    clock.now += 1
    assert progress.update(70, 0) == (  # the last batch reports however soon it comes
        "progress: 100/100 images (100%), 98 ok, 2 failed, 12.86 images/s, elapsed 12s, ETA 0s")


def test_no_rate_or_eta_before_the_second_batch():
    clock = FakeClock()
    progress = Progress(total=5, clock=clock)
    assert progress.line().endswith("0 failed, ? images/s, elapsed 0s, ETA ?")
    clock.now += 30  # start-up: the first batch's time says nothing about the rate
    assert progress.update(1, 0).endswith("1 ok, 0 failed, ? images/s, elapsed 30s, ETA ?")


def test_run_summary_file(tmp_path):
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    uri = write_run_summary(str(tmp_path), {"config_digest": "abc", "processed": 3}, started)
    path = tmp_path / RUNS_DIR / "20260102T030405Z-abc.json"
    assert uri.endswith(path.name) and json.loads(path.read_text()) == {"config_digest": "abc", "processed": 3}
    assert [p.name for p in (tmp_path / RUNS_DIR).iterdir()] == [path.name]  # no temporary left


def test_retried_batch_with_a_different_split_replaces_both_shards(tmp_path):
    """Attempt 1: c fails to read (transient) and the worker dies before reporting; the retry
    reads c. Every image must end in exactly one table, once."""
    cfg = ExtractConfig()
    digest, out, ids = cfg.digest(), str(tmp_path), ["a", "b", "c"]
    rows = {i: make_row(i, digest)[0] for i in ids}
    error = {"image_id": "c", "source_uri": "x", "config_digest": digest, "stage": "read",
             "error_type": "OSError", "reason": "connection reset"}
    commit_batch(out, digest, cfg.to_json(), ids, eigen_table([rows["a"], rows["b"]]), error_table([error]))
    commit_batch(out, digest, cfg.to_json(), ids, eigen_table(list(rows.values())), None)
    assert sorted(read_table(out, EIGEN_DIR).column("image_id").to_pylist()) == ids
    assert not list((tmp_path / ERROR_DIR).glob("*.parquet"))
    # The same attempt again (a second retry) changes nothing.
    commit_batch(out, digest, cfg.to_json(), ids, eigen_table(list(rows.values())), None)
    assert len(list((tmp_path / EIGEN_DIR).glob("*.parquet"))) == 1


def test_in_process_run_prints_progress_and_records_itself(tmp_path, capsys, offline_weights):
    from jobs.extract import run_extract

    write_synthetic_jpegs(tmp_path / "images", 3)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    source, out = str(tmp_path / "images"), str(tmp_path / "out")
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=4))
    summary = run_extract(source, out, cfg, RuntimeConfig(batch_size=2), local=True)
    assert "progress: 4/4 images (100%), 3 ok, 1 failed" in capsys.readouterr().out
    [record] = (tmp_path / "out" / RUNS_DIR).glob(f"*Z-{cfg.digest()}.json")
    assert summary.pop("run_file").endswith(record.name)
    saved = json.loads(record.read_text())
    assert saved == json.loads(json.dumps(summary))  # (tuples in the config become lists)
    assert (saved["mode"], saved["processed"], saved["failed"], saved["skipped"]) == ("in-process", 3, 1, 0)
    assert saved["errors"][0]["image_id"] == "broken.jpg" and saved["images_per_second"] > 0
    # Nothing left to do: no run, no record.
    assert run_extract(source, out, cfg, RuntimeConfig(), local=True)["skipped"] == 4
    assert len(list((tmp_path / "out" / RUNS_DIR).iterdir())) == 1
