"""The gallery page and its panels, without a label run: a 500-image page stays small and shows
thumbnails only (lazy-loaded, each linked to its full panel); panels tag each object's box
with its place by score and its score; long image ids fit. `tests/test_label_job.py` checks
the page a real run writes (links to files that exist, scores from the labels table)."""
import io
import re

import numpy as np
from PIL import Image

from pipeline.evaluation.panels import (TILE_HEIGHT, TITLE_HEIGHT, GalleryEntry, gallery_html, object_colour,
                                        object_tag, panel_name, render_panel, thumb_name, thumbnail)
from pipeline.features.geometry import GridGeometry


def test_a_500_image_gallery_is_small_and_references_thumbnails_only():
    ids = [f"coco/train2017/{i:012d}_a_rather_long_camera_name.jpg" for i in range(500)]
    entries = [GalleryEntry(i, panel_name(i), thumb_name(i), scores=tuple(0.9 / (k + 1) for k in range(5)))
               for i in ids]
    page = gallery_html("deep-spectral label", {"config_digest": "abc", "images in gallery": 500}, entries,
                        [("run summary", "../runs/x.json"), ("instances.json", "../instances.json")])
    assert len(page.encode()) < 300_000
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == 500 and all('loading="lazy"' in img for img in images)
    sources = [re.search(r'src="([^"]*)"', img).group(1) for img in images]
    assert sources == [thumb_name(i) for i in ids]  # never a full panel on the page
    links = re.findall(r'<a href="([^"]*)"><img', page)
    assert links == [panel_name(i) for i in ids]  # each thumbnail opens its panel
    assert '<a href="../runs/x.json">run summary</a>' in page and '<a href="../instances.json">' in page
    # The id: its whole text in a title (the caption cuts it with an ellipsis where long).
    assert f'title="{ids[7]}">{ids[7]}</p>' in page and "text-overflow:ellipsis" in page
    assert page.count(">#1 0.90</b>") == 500 and page.count(">#5 0.18</b>") == 500


def test_gallery_escapes_ids_and_quotes_file_names():
    entry = GalleryEntry('a "b"#1.jpg', 'panels/a "b"#1.png', 'thumbs/a "b"#1.jpg', caption="iou 0.5 <x>")
    page = gallery_html("t", {}, [entry])
    assert 'href="panels/a%20%22b%22%231.png"' in page and 'src="thumbs/a%20%22b%22%231.jpg"' in page
    assert 'title="a &quot;b&quot;#1.jpg"' in page and "iou 0.5 &lt;x&gt;" in page
    # No thumbnail: the page shows the panel itself.
    assert 'src="panels/x.png"' in gallery_html("t", {}, [GalleryEntry("x.jpg", "panels/x.png")])


def test_panel_tags_each_box_with_its_place_and_score_and_fits_a_long_title():
    rng = np.random.default_rng(0)
    image = (rng.random((120, 160, 3)) * 60).astype(np.uint8)  # dark: the tags stand out
    geom = GridGeometry(grid_h=8, grid_w=10, height=120, width=160, cell_h=15.0, cell_w=16.0,
                        scale_y=1.0, scale_x=1.0)
    vectors = rng.standard_normal((4, 8, 10))
    boxes = np.array([[10, 10, 150, 110], [12, 12, 60, 60], [100, 90, 140, 118]], dtype=float)
    scores = [0.81, 0.4, 0.05]
    masks = [np.zeros((120, 160), bool) for _ in boxes]
    panel = render_panel(image, vectors, geom, pred_boxes=boxes, object_masks=masks,
                         title="a/very/long/image/id/that/does/not/fit/in/one/tile/at/all.jpg",
                         box_labels=[object_tag(i, s) for i, s in enumerate(scores)])
    assert panel.height == TILE_HEIGHT + TITLE_HEIGHT
    first = np.asarray(panel)[:, :round(160 * TILE_HEIGHT / 120)]
    for i in range(len(boxes)):  # each object's tag: a patch filled with its colour
        filled = np.all(first == object_colour(i), axis=-1)
        assert filled.sum() > 150, i
    # The title is cut short of the tile's edge (with an ellipsis), not clipped by it.
    assert first[:TITLE_HEIGHT, -2:].min() > 200
    assert object_tag(0, 0.8123) == "#1 0.81"

    thumb = Image.open(io.BytesIO(thumbnail(panel)))
    assert thumb.format == "JPEG" and thumb.size == (round(panel.width / 2), round(panel.height / 2))
