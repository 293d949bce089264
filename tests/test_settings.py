"""One configuration: config files, presets, --set and --dry-run over the typed configs; every
setting reachable, bad files and keys refused before any work, run summaries that reproduce
their digest."""
import argparse
import dataclasses
import json
import shutil

import pytest
import yaml

from jobs import cli, cluster, evaluate_semantic, extract, label, nightly, train
from jobs.options import Options
from pipeline.config import ExtractConfig
from pipeline.objects.instances import LabelConfig, label_digest
from pipeline.settings import build, leaf_fields, preset_names, read_settings
from tests.conftest import ROOT

COMMANDS = {"extract": extract, "label": label, "cluster": cluster, "nightly": nightly}
# A setting that follows another: the head's seed is the clustering's (PseudoLabelConfig).
DERIVED = {"pseudo_labels.self_train.seed"}


def parser_of(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


def every_options() -> dict[str, Options]:
    return {"extract": extract.OPTIONS, "label": label.OPTIONS, "cluster": cluster.OPTIONS,
            "evaluate semantic": evaluate_semantic.OPTIONS, "train": train.OPTIONS}


def test_every_preset_loads_and_validates_for_the_commands_it_serves():
    assert {"offline", "dino_vits16", "dinov2_vits14", "gpu-fast", "voc-semantic"} <= set(preset_names())
    for name in preset_names():
        settings, is_summary = read_settings(name, {})
        assert settings and not is_summary
        for options in every_options().values():
            held = [s for s in settings if s in options.sections]
            for section in held:
                build(options.sections[section], settings[section], section)  # raises if invalid
    semantic = read_settings("voc-semantic", {})[0]
    cfg = build(ExtractConfig, semantic["extract"], "extract")
    assert cfg.segments.features == "pool+block9" and cfg.store_features and cfg.segments.store_patches


@pytest.mark.parametrize("command", list(every_options()))
def test_every_setting_has_at_most_one_flag_and_every_one_is_reachable_by_set(command):
    options = every_options()[command]
    paths = [f.path for f in options.flags]
    assert len(paths) == len(set(paths)), "a setting with two flags"
    names = [f.option for f in options.flags]
    assert len(names) == len(set(names)), "a flag name used twice"
    defaults = {name: cls() for name, cls in options.sections.items()}
    for path, _, default in [(p, h, d) for name, cls in options.sections.items() for p, h, d in leaf_fields(cls, name)]:
        if path in DERIVED or path.startswith("pseudo_labels.region_crops") or path.startswith("pseudo_labels.self_train"):
            continue  # optional sections: setting one of their fields turns them on (tested below)
        text = "none" if default is None else json.dumps(list(default)) if isinstance(default, tuple) else \
            json.dumps(default) if isinstance(default, bool) else str(default)
        args = argparse.Namespace(config=[], set_=[f"{path}={text}"])
        configs = options.configs(args)
        assert configs == defaults, f"--set {path}={text} does not give the default"
    on = options.configs(argparse.Namespace(config=[], set_=["pseudo_labels.self_train.epochs=3",
                                                             "pseudo_labels.region_crops.backbone=x"])) \
        if "pseudo_labels" in options.sections else None
    if on is not None:
        assert on["pseudo_labels"].self_train.epochs == 3 and on["pseudo_labels"].region_crops.backbone == "x"


def test_label_help_shows_defaults_and_at_most_30_options():
    parser = parser_of(label)
    options = [a for a in parser._actions if a.option_strings and "-h" not in a.option_strings]
    assert len(options) <= 30, [a.option_strings for a in options]
    text = parser.format_help()
    assert "(default: 15)" in text and "(default: dinov2_vits14_offline)" in text and "--set" in text


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("make, field", [
    (lambda d: ["--config", write(d / "a.yaml", "extract:\n  eigen: {kk: 3}\n")], "extract.eigen.kk: unknown setting"),
    (lambda d: ["--config", write(d / "b.yaml", "extract: [1, 2\n")], "not valid YAML"),
    (lambda d: ["--config", write(d / "c.yaml", "extrakt: {}\n")], "extrakt: unknown section"),
    (lambda d: ["--config", write(d / "d.json", '{"extract": {"eigen": {"k": "ten"}}}')], "extract.eigen.k: must be a whole"),
    (lambda d: ["--config", str(d / "missing.yaml")], "no such file"),
    (lambda d: ["--config", "nosuchpreset"], "no such file or preset"),
    (lambda d: ["--set", "eigen.k"], "--set: expected SECTION.FIELD=VALUE"),
    (lambda d: ["--set", "eigen.k=3"], "--set eigen.k: unknown section"),
    (lambda d: ["--set", "extract.eigen.kay=3"], "extract.eigen.kay: unknown setting"),
    (lambda d: ["--set", "extract.eigen.k=0"], "eigen.k: must be >= 2"),
    (lambda d: ["--set", "label.discovery.max_objects=0"], "discovery.max_objects"),
])
def test_a_bad_file_or_setting_exits_2_with_one_line_before_any_work(tmp_path, capsys, make, field):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        cli.main(["label", str(ROOT / "samples"), "--out", str(out), *make(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("argv, field", [
    (lambda d: ["train", str(ROOT / "samples"), "--out", str(d / "out"), "--set", "detector.epochs=0"],
     "detector.epochs: must be"),
    (lambda d: ["train", str(ROOT / "samples"), "--out", str(d / "out"), "--set", "detector.pyramid_channels=40"],
     "detector.pyramid_channels: must be"),
    (lambda d: ["train", str(ROOT / "samples"), "--out", str(d / "out")], "no instances.json"),
    (lambda d: ["label", str(ROOT / "samples"), "--out", str(d / "out"), "--store-features",
                "--detector", str(d / "nothing")], "not a trained detector"),
    (lambda d: ["label", str(ROOT / "samples"), "--out", str(d / "out"), "--detector", str(d / "nothing")],
     "label.detector: the detector reads the patch features"),
])
def test_train_and_label_detector_refuse_bad_inputs_with_one_line(tmp_path, capsys, argv, field):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv(tmp_path))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0], err
    assert not (tmp_path / "out").exists()


def test_precedence_is_defaults_then_files_then_flags_and_dry_run_prints_without_work(tmp_path, capsys):
    first = write(tmp_path / "first.yaml", "extract:\n  eigen: {k: 9}\n  backbone: {long_side: 224}\n")
    second = write(tmp_path / "second.json", json.dumps({"extract": {"eigen": {"k": 7}}, "runtime": {"batch_size": 3}}))
    out = tmp_path / "out"
    assert cli.main(["label", str(ROOT / "samples"), "--out", str(out), "--config", first, "--config", second,
                     "--batch-size", "5", "--set", "label.discovery.threshold=0.25", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    settings = yaml.safe_load(printed)
    assert settings["extract"]["eigen"]["k"] == 7  # the later file wins
    assert settings["extract"]["backbone"]["long_side"] == 224  # the earlier file's other keys stay
    assert settings["runtime"]["batch_size"] == 5  # a flag beats the files
    assert settings["label"]["discovery"]["threshold"] == 0.25 and settings["label"]["refine"] == "guided"
    cfg = build(ExtractConfig, settings["extract"], "extract")
    assert f"# extract digest: {cfg.digest()}" in printed
    assert f"# label digest: {label_digest(cfg.digest(), build(LabelConfig, settings['label'], 'label'))}" in printed
    assert not out.exists()


def test_a_run_summary_fed_back_reproduces_its_digest_and_skips_everything(tmp_path, capsys, offline_weights):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(ROOT / "samples" / "coffee.jpg", images / "coffee.jpg")
    out = tmp_path / "out"
    # guided_subsample 1 and the frame rule off are stored in their older form (left out of the
    # JSON), so reading the summary back must restore them, not today's defaults.
    assert cli.main(["label", str(images), "--out", str(out), "--local", "--gallery", "0", "--long-side", "112",
                     "--eigenvectors", "5", "--set", "label.guided_subsample=1", "--set", "label.frame_area=1",
                     "--set", "label.discovery.max_objects=2", "--summary", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    run_file = summary["run_file"]
    capsys.readouterr()
    assert cli.main(["label", str(images), "--out", str(out), "--local", "--gallery", "0",
                     "--config", run_file, "--dry-run"]) == 0
    assert f"# label digest: {summary['config_digest']}" in capsys.readouterr().out
    parquet = sorted(p.name for p in out.rglob("*.parquet"))
    assert cli.main(["label", str(images), "--out", str(out), "--local", "--gallery", "0", "--config", run_file]) == 0
    assert f"nothing to do: all 1 images already labelled in {out} for config {summary['config_digest']}" \
        in capsys.readouterr().out
    assert sorted(p.name for p in out.rglob("*.parquet")) == parquet


def test_the_voc_semantic_preset_is_the_documented_setup():
    """The preset's settings make the digests of the documented run (the flags it replaces):
    its extraction and, with the head's features made definite for those shards, its labels."""
    from pipeline.semantic.labelling import PseudoLabelConfig, with_head_features

    settings, _ = read_settings("voc-semantic", {})
    cfg = build(ExtractConfig, settings["extract"], "extract")
    labels = build(PseudoLabelConfig, settings["pseudo_labels"], "pseudo_labels")
    labels = dataclasses.replace(labels, self_train=with_head_features(labels.self_train, cfg))
    assert cfg.digest() == "57e7c039e5ec62e6"
    assert labels.self_train.features == "segment" and labels.digest(cfg.digest()) == "f0b54ecca4400413"
