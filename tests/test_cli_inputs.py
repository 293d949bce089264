"""Checked inputs and honest exits: a bad value exits 2 with one line before any work, a run with
too many failed images exits 1 and says why, a rerun says what failed before, and the run
summary records what ran and on which software."""
import json
import shutil

import pytest

from jobs import cli
from tests.conftest import ROOT

FAST = ["--long-side", "112", "--eigenvectors", "4", "--local", "--gallery", "0"]


@pytest.mark.parametrize("flags, field", [
    (["--eigenvectors", "0"], "eigen.k"),
    (["--long-side", "-5"], "backbone.long_side"),
    (["--backbone", "nosuch"], "unknown backbone 'nosuch'; known: dino_vits16"),
    (["--set", "label.discovery.threshold=abc"], "discovery.threshold"),
    (["--max-failures", "5x"], "runtime.max_failures"),
    (["--batch-size", "0"], "runtime.batch_size"),
    (["--set", "label.guided_subsample=0"], "label.guided_subsample"),
])
def test_a_bad_value_exits_2_with_one_line_and_leaves_out_untouched(tmp_path, capsys, flags, field):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        cli.main(["label", str(ROOT / "samples"), "--out", str(out), *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0], err
    assert not out.exists()  # no lease, no shards, no run record


def test_version_and_backbones(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("deep-spectral 0.")
    assert cli.main(["backbones"]) == 0
    table = capsys.readouterr().out
    assert "| dinov2_vits14_offline (default) | vit_small_patch14_dinov2 | 14 | 384 | offline | tokens |" in table


def test_exit_status_under_and_over_max_failures_and_the_rerun_hint(tmp_path, capsys, offline_weights):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("coffee.jpg", "chelsea.jpg"):
        shutil.copy(ROOT / "samples" / name, images / name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    tolerant, strict = tmp_path / "tolerant", tmp_path / "strict"
    # The default (10 images or 1%) tolerates one corrupt file in three.
    assert cli.main(["label", str(images), "--out", str(tolerant), *FAST, "--summary", str(tmp_path / "a.json")]) == 0
    summary = json.loads((tmp_path / "a.json").read_text())
    assert (summary["status"], summary["processed"], summary["failed"]) == ("ok", 2, 1)
    assert summary["ran"]["device"] == "cpu" and summary["ran"]["actors"] == 1
    assert summary["software"]["deep-spectral"] and summary["software"]["torch"]
    # --max-failures 0: the same run fails, and says why.
    assert cli.main(["label", str(images), "--out", str(strict), *FAST, "--max-failures", "0",
                     "--summary", str(tmp_path / "b.json")]) == 1
    summary = json.loads((tmp_path / "b.json").read_text())
    assert summary["status"] == "failed" and "1 of 3 images failed" in summary["why"]
    assert "error: the run failed: 1 of 3 images failed" in capsys.readouterr().err
    # A rerun skips the failed image and says how to retry it.
    assert cli.main(["label", str(images), "--out", str(tolerant), *FAST]) == 0
    assert "1 of these images failed in an earlier run" in capsys.readouterr().out
    # status: per digest what OUT holds and what failed, and its runs (the rerun had nothing to do).
    assert cli.main(["status", str(tolerant)]) == 0
    shown = capsys.readouterr().out
    assert f"| {summary['config_digest']} | objects | 2 | 1 |" in shown
    assert f"| {summary['extract_digest']} | eigenvectors | 2 | 0 |" in shown
    assert "1 run(s) recorded" in shown and "| ok |" in shown
    # A run in which every image failed fails, whatever --max-failures allows.
    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    shutil.copy(images / "broken.jpg", only_broken / "broken.jpg")
    assert cli.main(["label", str(only_broken), "--out", str(tmp_path / "none"), *FAST, "--max-failures", "100%"]) == 1
    assert "every image failed" in capsys.readouterr().err
