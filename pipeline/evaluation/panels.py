"""Pictures for people: one panel per image and an HTML gallery with the metrics on top.

A panel is a row of tiles: the image with ground-truth (green) and predicted boxes (each in its
object's colour: best red, then blue, yellow, green...; with labels, each box tagged with its
object's place by score and its score), the first eigenvectors as heat maps (red = positive =
foreground side, blue = negative), and the predicted mask over the image with the ground-truth
outline (or each object's mask in its colour). Beside each panel a half-size JPEG thumbnail
(`thumbnail`) is what the gallery page shows; it links to the full panel.
"""
from __future__ import annotations

import html
import io
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.features.geometry import GridGeometry, grid_to_pixels

TILE_HEIGHT = 200
TITLE_HEIGHT = 24
TITLE_FONT = 17  # px in the full panel: ~8 px in the thumbnail
LABEL_FONT = 22  # object tags: ~11 px in the thumbnail, readable there
THUMB_SCALE = 0.5  # thumbnail / full panel


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut and ended with '…' where it is wider than `width` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


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
    draw, font = ImageDraw.Draw(tile), _font(TITLE_FONT)
    draw.text((2, 2), _fit(draw, title, font, tile.width - 4), fill="black", font=font)
    return tile


def _pixel_box(box, scale: float) -> list[float]:
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    # a box under a pixel wide still draws as a line (PIL refuses x1 < x0)
    return [x0, y0 + TITLE_HEIGHT, max(x0, x1 - 1), max(y0, y1 - 1) + TITLE_HEIGHT]


def _draw_boxes(tile: Image.Image, boxes, scale: float, colour: str, width: int) -> None:
    draw = ImageDraw.Draw(tile)
    for box in np.asarray(boxes).reshape(-1, 4):
        draw.rectangle(_pixel_box(box, scale), outline=colour, width=width)


def object_colour(index: int) -> tuple[int, int, int]:
    """The colour of an image's object `index` (0 = best score) in panels and the gallery."""
    return tuple(int(c) for c in OBJECT_COLOURS[index % len(OBJECT_COLOURS)])


def _draw_objects(tile: Image.Image, boxes, scale: float, labels: list[str] | None) -> None:
    """Each object's box in its colour (the best drawn last, on top) and, with `labels`, a tag
    in that colour at the box's top-left corner, inside the image; a tag that would cover a
    better object's tag moves to the nearest free height (below or above it)."""
    draw, font = ImageDraw.Draw(tile), _font(LABEL_FONT)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i in reversed(range(len(boxes))):
        draw.rectangle(_pixel_box(boxes[i], scale), outline=object_colour(i), width=3 if i == 0 else 2)
    placed: list[tuple[float, float, float, float]] = []
    for i, text in enumerate((labels or [])[:len(boxes)]):
        x0, y0, _, _ = _pixel_box(boxes[i], scale)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 6, bottom - top + 4
        x = min(max(x0, 0), max(tile.width - w, 0))
        want = min(max(y0, TITLE_HEIGHT), tile.height - h)
        beside = [p for p in placed if x < p[2] and p[0] < x + w]  # tags this one's columns cross
        heights = [want] + [p[3] for p in beside] + [p[1] - h for p in beside]
        free = [y for y in heights if TITLE_HEIGHT <= y <= tile.height - h
                and not any(y < p[3] and p[1] < y + h for p in beside)]
        y = min(free, key=lambda y: abs(y - want)) if free else want  # no room: over the others
        placed.append((x, y, x + w, y + h))
        colour = object_colour(i)
        ink = "black" if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else "white"
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
        draw.text((x + 3 - left, y + 2 - top), text, fill=ink, font=font)


def overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8, (H, W) bool [, (H, W) bool] -> mask tinted red, GT outline green."""
    out = image.astype(np.float64)
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 0, 0])
    if gt is not None:
        edge = gt & ~ndimage.binary_erosion(gt, iterations=2)
        out[edge] = [0, 255, 0]
    return out.round().astype(np.uint8)


GALLERY_DIR = "gallery"  # OUT/gallery/ of a label run: index.html, panels/ and thumbs/


def panel_name(image_id: str) -> str:
    """An image id (may hold '/') -> its panel's file name under OUT/gallery/."""
    return "panels/" + image_id.replace("/", "__").rsplit(".", 1)[0] + ".png"


def thumb_name(image_id: str) -> str:
    """An image id -> its panel's thumbnail under OUT/gallery/ (`thumbnail`)."""
    return "thumbs/" + image_id.replace("/", "__").rsplit(".", 1)[0] + ".jpg"


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
                 object_masks: list[np.ndarray] | None = None, box_labels: list[str] | None = None) -> Image.Image:
    """Original (H, W, 3) uint8 image, (k, grid_h, grid_w) oriented eigenvectors, optional
    (H, W) bool masks (or several objects' masks, best first) and (n, 4) xyxy boxes in
    original pixels (predicted ones best first, each optionally tagged with its `box_labels`
    text, e.g. object_tag) -> one panel image."""
    scale = TILE_HEIGHT / image.shape[0]
    first = _tile(image, title, scale)
    if gt_boxes is not None:
        _draw_boxes(first, gt_boxes, scale, "#00dd00", 2)
    if pred_boxes is not None and len(pred_boxes):
        _draw_objects(first, pred_boxes, scale, box_labels)
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


def object_tag(index: int, score: float) -> str:
    """What a panel and the gallery write next to object `index` (0 = best score in its image):
    its place by score and its score."""
    return f"#{index + 1} {score:.2f}"


def thumbnail(panel: Image.Image) -> bytes:
    """A panel -> its THUMB_SCALE JPEG, what the gallery page shows."""
    small = panel.resize((max(1, round(panel.width * THUMB_SCALE)), max(1, round(panel.height * THUMB_SCALE))),
                         Image.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass(frozen=True)
class GalleryEntry:
    """One panel on a gallery page; paths relative to the page."""

    image_id: str
    panel: str  # the full panel, which the thumbnail links to
    thumb: str = ""  # its thumbnail ("": the page shows the full panel)
    caption: str = ""  # a line under the id (numbers)
    scores: tuple[float, ...] = ()  # the image's objects' scores, best first (object_tag, in their colours)


_CSS = ("body{font-family:sans-serif;margin:12px 16px}table{border-collapse:collapse}th,td{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left}nav a{margin-right:1.5em}"
        "figure{display:flex;flex-wrap:wrap;align-items:flex-start;gap:4px 14px;margin:0;padding:6px 0;"
        "border-top:1px solid #ddd}figure a{flex:none;width:min(100%,780px)}figure img{display:block;height:"
        f"{round((TILE_HEIGHT + TITLE_HEIGHT) * THUMB_SCALE)}px;max-width:100%;object-fit:contain}}"
        "figcaption{flex:1 1 18em;min-width:0;font-size:14px;line-height:1.5;overflow-wrap:anywhere}"
        "figcaption p{margin:0;font-weight:bold;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}"
        "figcaption b{font-weight:normal;white-space:nowrap;margin-right:.8em;padding-left:.4em;"
        "border-left:.8em solid}"
        + "".join(f".c{i}{{border-color:rgb{object_colour(i)}}}" for i in range(len(OBJECT_COLOURS))))


def gallery_html(title: str, metrics: dict, entries: list[GalleryEntry],
                 links: list[tuple[str, str]] = ()) -> str:
    """Metrics (flat dict), links ((text, href) pairs: the run summary, instances.json) and
    entries -> index.html. Each entry is its thumbnail (lazy-loaded, a fixed height so unloaded
    ones hold their place), linked to its full panel, with a caption: the image id (one line,
    cut with '…' where long, the whole id in its title), the objects' tags in their panel
    colours, and the entry's caption line. Small for a large gallery: ~400 bytes an entry."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in metrics.items() if not isinstance(v, (dict, list)))
    nav = "".join(f'<a href="{_href(href)}">{html.escape(text)}</a>' for text, href in links)
    items = "".join(_figure(e) for e in entries)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            + (f"<nav>{nav}</nav>" if nav else "")
            + f"<table>{rows}</table><p>{len(entries)} images; click a picture for its full panel."
            + (" #n: an object's place by score in its image, then its score; each in its colour on the panel."
               if any(e.scores for e in entries) else "")
            + f"</p>{items}</body></html>")


def _figure(e: GalleryEntry) -> str:
    image_id = html.escape(e.image_id)
    tags = "".join(f"<b class=c{i % len(OBJECT_COLOURS)}>{html.escape(object_tag(i, s))}</b>"
                   for i, s in enumerate(e.scores))
    lines = []
    if e.scores:
        lines.append(f"{len(e.scores)} object{'s' if len(e.scores) != 1 else ''}: {tags}")
    if e.caption:
        lines.append(html.escape(e.caption))
    return (f'<figure><a href="{_href(e.panel)}"><img src="{_href(e.thumb or e.panel)}" '
            f'loading="lazy" alt=""></a><figcaption><p title="{image_id}">{image_id}</p>{"<br>".join(lines)}'
            "</figcaption></figure>")


def _href(path: str) -> str:
    """A relative file path -> an href attribute value (a '#', '?' or space in a file name stays
    part of the name)."""
    return html.escape(quote(path))


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
