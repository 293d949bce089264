"""Faults on a real multi-node Ray cluster on this machine: a killed actor, a lost node, a
killed driver, an image that kills its worker, a driver resubmitted at once. Each time every
image must end up exactly once in OUT/eigs or OUT/errors.

The cluster is three `ray start --block` nodes of one CPU each (head + two workers; a node
is that process and everything under it), shared by the tests of this module. Ray
publishes the machine's address rather than 127.0.0.1, but all traffic stays on this host.
The job runs as `python -m jobs.extract --address ...`, the driver a user would run, with
two 1-CPU actors, so they sit on two different nodes.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.synthetic_images import write_synthetic_jpegs
from pipeline.io.images import TEST_EXIT_MARKER_ENV
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, read_table
from tests.conftest import ROOT
from tests.fault_table import report
from tests.test_job_submit import RAY, free_port

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(not Path("/proc/self").exists(), reason="finds Ray's processes in /proc (Linux)")]
# 100 batches: one actor alone needs ~10 s for them here, time for the other to load, and
# most are left when the fault strikes.
N_IMAGES, BATCH = 200, 2
EXIT_MARKER = b"DEEP-SPECTRAL-TEST-EXIT"  # pipeline.io.images: a file holding it exits its decoder
ENV = {**os.environ, "RAY_AUTH_MODE": "token",  # Ray 2.60: `ray start` heads want the token
       TEST_EXIT_MARKER_ENV: EXIT_MARKER.decode(),  # inherited by every worker of the cluster
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def start_node(log: Path, *args: str) -> subprocess.Popen:
    # Fixed-default ports taken from the free pool: other Ray clusters may run on this machine.
    with log.open("w") as f:
        return subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats",
             "--object-store-memory=200000000", f"--dashboard-agent-listen-port={free_port()}",
             f"--metrics-export-port={free_port()}", *args],
            env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def cpus_up(address: str) -> float:
    """CPUs of the live nodes, 0 while the head does not answer."""
    probe = ("import ray; ray.init(address=%r, log_to_driver=False); "
             "print(ray.cluster_resources().get('CPU', 0))" % address)
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0.0
    return float(done.stdout.split()[-1]) if done.returncode == 0 else 0.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("nodes")
    gcs = free_port()
    address = f"127.0.0.1:{gcs}"
    nodes = {"head": start_node(logs / "head.log", "--head", f"--port={gcs}",
                                f"--ray-client-server-port={free_port()}", "--include-dashboard=false")}
    try:
        wait_for(lambda: cpus_up(address) >= 1, 180, "the head", nodes["head"])
        for n, name in enumerate(("worker1", "worker2"), start=2):
            # One at a time: raylets starting together raced for the same port here.
            nodes[name] = start_node(logs / f"{name}.log", f"--address={address}")
            wait_for(lambda: cpus_up(address) >= n, 180, name, *nodes.values())
        yield address, nodes
    finally:
        for node in nodes.values():
            kill_node(node)
        # A killed head leaves /tmp/ray/ray_current_cluster pointing at it (tests/test_job_submit.py).
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink()


def processes() -> dict[int, tuple[int, bytes]]:
    """{pid: (parent pid, command line)} of every process on this machine, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), (entry / "cmdline").read_bytes())
        except (ValueError, OSError):  # not a process, or one that just exited
            continue
    return found


def node_of(pid: int, nodes: dict, table: dict) -> str | None:
    """The name of the node whose `ray start` process `pid` descends from (Ray puts workers in
    process groups of their own, so the tree, not the group, says which node runs them)."""
    roots = {p.pid: name for name, p in nodes.items()}
    while pid in table and pid not in roots:
        pid = table[pid][0]
    return roots.get(pid)


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a node: its `ray start` process and everything under it (raylet, agents, workers)."""
    table = processes()
    doomed = [pid for pid in table if node_of(pid, {"node": node}, table)]
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait(timeout=60)


def actor_pids(nodes: dict, loaded: bool = False) -> dict[int, str]:
    """{pid: node name} of this cluster's ExtractActor processes (never another cluster's);
    loaded: only those past their constructor. Ray titles an actor's process after its class
    and the method it runs (`ray::MapWorker(Map(ExtractActor)).__init__`, `.submit`)."""
    table = processes()
    found = {pid: node_of(pid, nodes, table) for pid, (_, cmd) in table.items()
             if b"ExtractActor" in cmd and not (loaded and b"__init__" in cmd)}
    return {pid: node for pid, node in found.items() if node}


def shards(out: Path) -> dict[str, int]:
    """{kind/name: mtime_ns} of the committed shards."""
    return {f"{kind}/{p.name}": p.stat().st_mtime_ns
            for kind in (EIGEN_DIR, ERROR_DIR) for p in (out / kind).glob("part-*.parquet")}


def committed_ids(out: Path) -> list[str]:
    ids = []
    for kind in (EIGEN_DIR, ERROR_DIR):
        table = read_table(str(out), kind, columns=["image_id"])
        ids += table.column("image_id").to_pylist() if table is not None else []
    return ids


def start_job(images: Path, out: Path, address: str, summary: Path, batch: int = BATCH,
              *extra: str) -> subprocess.Popen:
    # A short lease: a resubmit takes a killed driver's lease over after 10 s, not 60.
    with open(out.parent / f"{summary.stem}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.extract", str(images), "--out", str(out), "--long-side", "112",
             "--eigenvectors", "4", "--batch-size", str(batch), "--num-actors", "2", "--address", address,
             "--summary", str(summary), "--set", "runtime.lease_heartbeat_s=2", "--set", "runtime.lease_stale_s=10", *extra],
            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, timeout: float, what: str, *processes: subprocess.Popen) -> None:
    """Poll condition() until true; fails on timeout or when one of `processes` exits first."""
    deadline = time.time() + timeout
    while not condition():
        for proc in processes:
            assert proc.poll() is None, f"{proc.args[:3]} exited (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def finish(job: subprocess.Popen, summary: Path) -> tuple[dict, str]:
    """(the job's summary, its log) once it exits, which it must with 0."""
    rc = job.wait(timeout=480)
    log = (summary.parent / f"{summary.stem}.log").read_text()
    assert rc == 0, log[-4000:]
    return json.loads(summary.read_text()), log


@pytest.fixture
def images(tmp_path):
    names = write_synthetic_jpegs(tmp_path / "images", N_IMAGES)
    return tmp_path / "images", sorted(names)


def run_with_fault(cluster, images, tmp_path, strike) -> tuple[dict, list[str], int]:
    """Run the job; once 3 batches are committed and both actors are loaded,
    strike({actor pid: node name}) kills something. Returns (summary, committed ids, shards committed before the fault) after
    checking that Ray re-ran a lost batch."""
    address, nodes = cluster
    folder, _ = images
    out = tmp_path / "out"
    job = start_job(folder, out, address, tmp_path / "summary.json")
    # Both actors loaded: one still in its constructor has no batch to lose (a first version
    # of this test killed such an actor and proved nothing).
    wait_for(lambda: len(shards(out)) >= 3 and len(actor_pids(nodes, loaded=True)) == 2, 300,
             "3 shards and 2 loaded actors", job)
    at_fault = len(shards(out))
    strike(actor_pids(nodes, loaded=True))
    summary, log = finish(job, tmp_path / "summary.json")
    assert "will be retried" in log  # Ray's word that a task lost with its actor runs again
    return summary, committed_ids(out), at_fault


def test_killed_actor_is_restarted_and_its_batch_redone(cluster, images, tmp_path):
    def kill_actor(actors):
        os.kill(next(iter(actors)), signal.SIGKILL)

    summary, ids, at_fault = run_with_fault(cluster, images, tmp_path, kill_actor)
    assert at_fault < N_IMAGES // BATCH, "the job had finished before the fault"
    assert sorted(ids) == images[1]  # every image exactly once, in eigs or errors
    assert (summary["processed"], summary["failed"], summary["skipped"]) == (N_IMAGES, 0, 0)
    report("actor killed (SIGKILL)", N_IMAGES, str(tmp_path / "out"))
    record = Path(summary["run_file"].removeprefix("file://"))  # the run's own record in OUT/runs
    assert json.loads(record.read_text())["mode"] == "ray"


def test_killed_driver_resumes_without_redoing_work(cluster, images, tmp_path):
    address, nodes = cluster
    folder, names = images
    out = tmp_path / "out"
    job = start_job(folder, out, address, tmp_path / "first.json")
    wait_for(lambda: len(shards(out)) >= 4, 300, "4 shards", job)
    job.kill()
    job.wait(timeout=60)
    # Ray kills a dead driver's actors; until they are gone one could still commit a batch.
    wait_for(lambda: not actor_pids(nodes), 120, "the dead job's actors to exit")
    before, done = shards(out), committed_ids(out)
    assert 0 < len(done) < N_IMAGES and len(done) == len(set(done))

    summary, _ = finish(start_job(folder, out, address, tmp_path / "second.json"), tmp_path / "second.json")
    assert summary["skipped"] == len(done)
    assert summary["processed"] + summary["failed"] == N_IMAGES - len(done)
    after = shards(out)
    assert {name: after.get(name) for name in before} == before  # finished shards untouched
    assert sorted(committed_ids(out)) == names
    report("driver killed, resubmitted after its actors exit", N_IMAGES, str(out))


def test_resubmit_at_once_while_old_actors_run(cluster, images, tmp_path):
    """The driver is killed and the same job resubmitted at once, its actors still running:
    the new driver waits for the dead one's lease to go stale, takes it over, and the old
    actors stop committing; readers keep one row per image whatever the shards hold."""
    address, nodes = cluster
    folder, names = images
    out = tmp_path / "out"
    job = start_job(folder, out, address, tmp_path / "first.json")
    wait_for(lambda: len(shards(out)) >= 4 and len(actor_pids(nodes, loaded=True)) == 2, 300,
             "4 shards and 2 loaded actors", job)
    job.kill()
    job.wait(timeout=60)
    old_actors = set(actor_pids(nodes))
    second = start_job(folder, out, address, tmp_path / "second.json")
    summary, log = finish(second, tmp_path / "second.json")
    assert "waiting for run" in log and summary["lease"]["took_over"]  # the dead driver's lease
    ids = committed_ids(out)
    assert sorted(ids) == names  # every image once, as readers see them
    line = report("driver killed, resubmitted at once", N_IMAGES, str(out),
                  old_actors_alive_at_resubmit=len(old_actors), lease_wait_s=summary["lease"]["waited_s"])
    assert line["rows_out"] + line["error_rows"] == N_IMAGES


def test_poison_image_becomes_one_worker_error_row(cluster, tmp_path):
    """One image's decoder exits its process (os._exit through the test hook) every time, one
    is plainly corrupt: the poison batch loses its worker, is split, the poison image loses
    its worker alone and becomes the only 'worker' error row; everything else is written."""
    address, _ = cluster
    folder = tmp_path / "images"
    names = write_synthetic_jpegs(folder, 10)
    poison, corrupt = folder / "img00005.jpg", folder / "img00002.jpg"
    poison.write_bytes(poison.read_bytes() + EXIT_MARKER)  # still a valid JPEG
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    out = tmp_path / "out"
    summary, log = finish(start_job(folder, out, address, tmp_path / "poison.json", 4,
                                    "--set", "runtime.max_worker_deaths=1"), tmp_path / "poison.json")
    rows = read_table(str(out), EIGEN_DIR, columns=["image_id"]).column("image_id").to_pylist()
    errors = {e["image_id"]: e for e in read_table(str(out), ERROR_DIR).to_pylist()}
    assert sorted(rows) == sorted(set(names) - {poison.name, corrupt.name})
    assert set(errors) == {poison.name, corrupt.name}
    assert (errors[poison.name]["stage"], errors[poison.name]["error_type"]) == ("worker", "WorkerDied")
    assert "exited while processing this image alone, 1 times" in errors[poison.name]["reason"]
    assert errors[corrupt.name]["stage"] == "decode" and "will be retried" in log
    assert (summary["processed"], summary["failed"]) == (8, 2)
    assert not (out / "_attempts").exists() or not any((out / "_attempts").rglob("*.json"))
    report("poison image (decoder os._exit) + corrupt file", 10, str(out))


def test_lost_worker_node_moves_its_actor(cluster, images, tmp_path):
    """Kills a whole worker node (raylet, agents, the actor): Ray restarts the actor on the
    node left free and re-runs the lost batches. Runs last: the cluster keeps one worker."""
    _, nodes = cluster

    def kill_worker_node(actors):
        kill_node(nodes[next(node for node in actors.values() if node != "head")])

    summary, ids, at_fault = run_with_fault(cluster, images, tmp_path, kill_worker_node)
    assert at_fault < N_IMAGES // BATCH, "the job had finished before the fault"
    assert sorted(ids) == images[1]
    assert (summary["processed"], summary["failed"]) == (N_IMAGES, 0)
    report("worker node killed (SIGKILL of raylet, agents, actor)", N_IMAGES, str(tmp_path / "out"))
