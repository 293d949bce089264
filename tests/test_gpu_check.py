"""bench/gpu_check.py must run on a bare GPU machine: no Ray, pymatting, pycocotools or ONNX
there. Here it runs with those imports blocked: the default run skips the GPU parts and says
why; --cpu --quick runs every measured part's code at toy sizes."""
import subprocess
import sys

import torch

from tests.conftest import ROOT

# sys.modules[name] = None makes `import name` (and its submodules) raise ImportError.
BLOCKED = ("ray", "pymatting", "pycocotools", "onnx", "onnxruntime")
LAUNCH = ("import runpy, sys; sys.modules.update({m: None for m in %r}); "
          "sys.argv = ['bench/gpu_check.py'] + sys.argv[1:]; "
          "runpy.run_path('bench/gpu_check.py', run_name='__main__')" % (BLOCKED,))


def run_check(*args: str) -> str:
    done = subprocess.run([sys.executable, "-c", LAUNCH, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_without_a_gpu_every_gpu_part_is_skipped_with_its_reason():
    out = run_check()
    assert "CUDA available:" in out
    if not torch.cuda.is_available():
        for part in ("GPU tests (pytest -m gpu)", "CuPy vs NumPy eigenpairs", "throughput table"):
            assert f"skipped: {part}: " in out


def test_the_measured_parts_run_on_the_cpu_without_ray_or_pymatting():
    out = run_check("--cpu", "--quick")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    stages = {line.split(" | ")[0].lstrip("| ") for line in table}
    assert {"backbone forward", "graph", "eigensolve", "decode", "forward alone, bf16", "extract: eigensolve + orientation",
            "extract end to end, bf16", "extract end to end, fp32", "label end to end, bf16"} <= stages
    assert "% of the forward alone's rate" in out
    assert sum("bf16 autocast" in line for line in table) == 2  # batches 1 and 2
    assert "weights: " in out and ("RANDOM weights" in out or "float16 file" in out)
    assert "skipped: throughput table" not in out


def test_the_region_crop_gpu_bench_runs_on_the_cpu():
    done = subprocess.run([sys.executable, "bench/gpu_region_crops.py", "--cpu", "--repeat", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "largest angle cpu vs CPU: 0.0000 deg" in done.stdout and "| region crops on cpu" in done.stdout
