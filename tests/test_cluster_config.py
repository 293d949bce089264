"""cluster.yaml passes Ray's own autoscaler validation (no cloud access needed)."""
import pytest
import yaml

from tests.conftest import ROOT

autoscaler_util = pytest.importorskip("ray.autoscaler._private.util")


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_validates_with_ray(config):
    autoscaler_util.validate_config(autoscaler_util.prepare_config(config))


def test_validation_catches_a_broken_config(config):
    broken = autoscaler_util.prepare_config(config)
    broken["head_node_type"] = "no-such-node-type"
    with pytest.raises(ValueError, match="head_node_type"):
        autoscaler_util.validate_config(broken)


def test_gpu_workers_scale_from_zero_and_services_stay_private(config):
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert any("[gpu,cloud]" in cmd for cmd in config["setup_commands"])
