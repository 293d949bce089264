"""Pictures for people: one panel per image and an HTML gallery with the metrics on top.

A panel is a row of tiles: the image with ground-truth (green) and predicted (red; further
boxes orange) boxes, the first eigenvectors as heat maps (red = positive = foreground side,
blue = negative), and the predicted mask over the image with the ground-truth outline.
"""
from __future__ import annotations

import html

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pipeline.features.geometry import GridGeometry, grid_to_pixels

TILE_HEIGHT = 200
TITLE_HEIGHT = 16


def diverging(values: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8, blue (negative) - white (0) - red (positive), scaled
    by max |value| so the sign, which the border rule makes meaningful, stays visible."""
    v = values / max(float(np.abs(values).max()), 1e-12)
    pos, neg = np.clip(v, 0, 1)[..., None], np.clip(-v, 0, 1)[..., None]
    white = np.ones(v.shape + (3,))
    rgb = white - pos * np.array([0.0, 0.8, 0.8]) - neg * np.array([0.8, 0.8, 0.0])
    return (rgb * 255).round().astype(np.uint8)


def _tile(rgb: np.ndarray, title: str, scale: float) -> Image.Image:
    img = Image.fromarray(rgb)
    img = img.resize((max(1, round(img.width * scale)), TILE_HEIGHT), Image.BILINEAR)
    tile = Image.new("RGB", (img.width, TILE_HEIGHT + TITLE_HEIGHT), "white")
    tile.paste(img, (0, TITLE_HEIGHT))
    ImageDraw.Draw(tile).text((2, 2), title, fill="black")
    return tile


def _draw_boxes(tile: Image.Image, boxes, scale: float, colour: str, width: int) -> None:
    draw = ImageDraw.Draw(tile)
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
        draw.rectangle([x0 * scale, y0 * scale + TITLE_HEIGHT, x1 * scale - 1, y1 * scale - 1 + TITLE_HEIGHT],
                       outline=colour, width=width)


def overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8, (H, W) bool [, (H, W) bool] -> mask tinted red, GT outline green."""
    out = image.astype(np.float64)
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 0, 0])
    if gt is not None:
        edge = gt & ~ndimage.binary_erosion(gt, iterations=2)
        out[edge] = [0, 255, 0]
    return out.round().astype(np.uint8)


GALLERY_DIR = "gallery"  # OUT/gallery/ of a label run: index.html and panels/


def panel_name(image_id: str) -> str:
    """An image id (may hold '/') -> its panel's file name under OUT/gallery/."""
    return "panels/" + image_id.replace("/", "__").rsplit(".", 1)[0] + ".png"


# Distinct tints for objects, best first (red as the single-object mask).
OBJECT_COLOURS = np.array([[255, 0, 0], [0, 160, 255], [255, 200, 0], [0, 200, 80], [200, 0, 255],
                           [255, 120, 0], [0, 220, 220], [150, 90, 40]], dtype=np.float64)


def object_overlay(image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) bool masks, best first -> each tinted its own colour, the
    better object drawn over the worse where they overlap."""
    out = image.astype(np.float64)
    for i in reversed(range(len(masks))):
        m = masks[i]
        out[m] = 0.5 * image[m] + 0.5 * OBJECT_COLOURS[i % len(OBJECT_COLOURS)]
    return out.round().astype(np.uint8)


def render_panel(image: np.ndarray, eigenvectors: np.ndarray, geom: GridGeometry, *,
                 mask: np.ndarray | None = None, gt_mask: np.ndarray | None = None,
                 pred_boxes: np.ndarray | None = None, gt_boxes: np.ndarray | None = None,
                 n_vectors: int = 3, title: str = "", mask_title: str = "mask (red), GT (green)",
                 object_masks: list[np.ndarray] | None = None) -> Image.Image:
    """Original (H, W, 3) uint8 image, (k, grid_h, grid_w) oriented eigenvectors, optional
    (H, W) bool masks (or several objects' masks, best first) and (n, 4) xyxy boxes in
    original pixels -> one panel image."""
    scale = TILE_HEIGHT / image.shape[0]
    first = _tile(image, title, scale)
    if gt_boxes is not None:
        _draw_boxes(first, gt_boxes, scale, "#00dd00", 2)
    if pred_boxes is not None and len(pred_boxes):
        _draw_boxes(first, pred_boxes[1:], scale, "orange", 1)
        _draw_boxes(first, pred_boxes[:1], scale, "red", 3)
    tiles = [first]
    for i in range(1, min(n_vectors + 1, len(eigenvectors))):
        heat = diverging(grid_to_pixels(eigenvectors[i], geom, bilinear=True))
        tiles.append(_tile(heat, f"eigenvector {i}", scale))
    if object_masks is not None:
        tiles.append(_tile(object_overlay(image, object_masks), mask_title, scale))
    elif mask is not None:
        tiles.append(_tile(overlay(image, mask, gt_mask), mask_title, scale))
    panel = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for t in tiles:
        panel.paste(t, (x, 0))
        x += t.width + 4
    return panel


def gallery_html(title: str, metrics: dict, entries: list[tuple[str, str]]) -> str:
    """Metrics (flat dict) and (panel file relative to the page, caption) pairs -> index.html."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in metrics.items() if not isinstance(v, (dict, list)))
    items = "".join(f'<figure><img src="{html.escape(src)}" loading="lazy"><figcaption>{html.escape(cap)}'
                    f"</figcaption></figure>" for src, cap in entries)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
            "padding:2px 8px;text-align:left}figure{margin:8px 0}img{max-width:100%}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table>{rows}</table>{items}</body></html>")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
