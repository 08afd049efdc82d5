"""benchmarks/gallery.py: the README's phantoms beside the real film, each in one tile."""

from __future__ import annotations

import numpy as np

from benchmarks import gallery


def test_one_tile_each_boxes_drawn_and_the_real_film_last(chest_cr, monkeypatch):
    monkeypatch.setattr(gallery, "RADIOGRAPH_CASES", (1,))
    monkeypatch.setattr(gallery, "SIZE_RANGE", (384, 384))

    sheet = np.asarray(gallery.gallery(chest_cr["RG1_UNCR.dcm"]))

    tile = gallery.TILE
    assert sheet.shape == (tile + gallery.CAPTION, 3 * tile, 3)
    tiles = [sheet[:tile, i * tile:(i + 1) * tile] for i in range(3)]
    box_colour = np.all(tiles[1] == (255, 200, 0), axis=-1)
    assert box_colour.any()  # the radiograph case's findings are outlined
    assert not np.all(tiles[2] == (255, 200, 0), axis=-1).any()  # the real film has none
    assert all(t.std() > 20 for t in tiles)  # each shows an image, not a blank tile
