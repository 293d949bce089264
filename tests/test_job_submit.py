"""`ray job submit` against a running Ray head, exactly as users submit to a cluster."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    gcs, dashboard = free_port(), free_port()
    # The job's `python` must be this environment's, as with an activated virtualenv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while subprocess.run([RAY, "job", "list", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        assert head.poll() is None and time.time() < deadline, "Ray head did not come up"
        time.sleep(2)
    yield address, env
    os.killpg(head.pid, signal.SIGKILL)  # the head and every Ray process it started
    head.wait(timeout=60)
    # A killed head leaves /tmp/ray/ray_current_cluster pointing at it; later ray.init() calls
    # on this machine would try to join the dead cluster.
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
        current.unlink()


def test_ray_job_submit(ray_head, tmp_path, offline_weights):
    address, env = ray_head
    out = tmp_path / "out"
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
         "python", "-m", "jobs.extract", "samples", "--out", str(out), "--long-side", "224", "--eigenvectors", "4"],
        env=env, capture_output=True, text=True, timeout=480,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 images written, 0 failed" in result.stdout
    ids = pq.read_table(out / "eigs").column("image_id").to_pylist()
    assert sorted(ids) == sorted(p.name for p in SAMPLES.glob("*.jpg"))
