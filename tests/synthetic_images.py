"""Small synthetic JPEGs for scale benchmarks and fault tests: no data set needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_synthetic_jpegs(folder: Path, n: int, long_side: int = 112, seed: int = 0) -> list[str]:
    """Write n JPEGs (a few coloured shapes on a gradient, alternating landscape and portrait)
    into folder; returns their names. Each image differs, so no two rows are identical."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    short = long_side * 3 // 4
    names = []
    for i in range(n):
        w, h = (long_side, short) if i % 2 == 0 else (short, long_side)
        ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3)
        image = Image.fromarray(np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            x1, y1 = x0 + rng.integers(w // 6, w // 2), y0 + rng.integers(h // 6, h // 2)
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        name = f"img{i:05d}.jpg"
        image.save(folder / name, quality=90)
        names.append(name)
    return names
