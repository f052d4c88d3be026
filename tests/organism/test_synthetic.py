"""The synthetic comic generator: deterministic, six distinct captions, features that survive tiling."""
import numpy as np
import pytest

from gazekit.comics import synthetic
from gazekit.comics.synthetic import ACTIONS, COLOURS, OBJECTS, cached_tile, draw_panel, panel_tile
from gazekit.organism.processor import ComicTileProcessor


def test_deterministic_and_seed_dependent():
    a, b, c = synthetic(3, seed=7), synthetic(3, seed=7), synthetic(3, seed=8)
    for x, y in zip(a, b):
        assert x.captions == y.captions and x.main_panel == y.main_panel
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert [x.captions for x in a] != [x.captions for x in c]


def test_six_distinct_captions_from_the_vocabulary():
    for s in synthetic(30, seed=1):
        assert len(s.panel_boxes) == 6 and len(s.captions) == 6 and len(set(s.captions)) == 6
        assert 1 <= s.main_panel <= 6
        for cap, attrs in zip(s.captions, s.attributes):
            colour, obj, action = cap.split()
            assert (colour, obj, action) == attrs
            assert colour in COLOURS and obj in OBJECTS and action in ACTIONS
        assert s.image.size == (6 * 256 + 5 * 6, 256)


def test_strip_panels_are_the_drawn_panels_and_fast_path_matches_processor():
    """Training uses cached_tile; evaluation goes through Strip + processor. They must give identical tiles."""
    proc = ComicTileProcessor()
    for s in synthetic(5, seed=3):
        tiles = proc.tiles(s.image, s.panel_boxes)
        for i, (a, o) in enumerate(zip(s.attributes, s.offsets)):
            assert np.array_equal(tiles[i], cached_tile(*a, i + 1 == s.main_panel, *o))
            assert np.array_equal(np.asarray(s.panel(i + 1)), np.asarray(draw_panel(*a, i + 1 == s.main_panel, *o)))


def _object_area(tile, action):
    """Tile pixels (inside the frame) that differ from the background colour, weighted by coverage."""
    bg = np.array(ACTIONS[action], dtype=float)
    inner = tile[4:-4, 4:-4].astype(float)
    d = np.abs(inner - bg).sum(-1)
    return float((d / d.max()).sum()) if d.max() > 0 else 0.0


@pytest.mark.parametrize("colour", list(COLOURS))
def test_sizes_stay_apart_after_tiling(colour):
    # the three object sizes must separate at 32 x 32 for every colour and background, wherever the object sits
    areas = {o: [] for o in OBJECTS}
    for action in ACTIONS:
        for obj in OBJECTS:
            for dx, dy in [(0, 0), (3, -3), (-3, 3)]:
                areas[obj].append(_object_area(panel_tile(draw_panel(colour, obj, action, False, dx, dy)), action))
    assert max(areas["dot"]) * 2.5 < min(areas["ball"])
    assert max(areas["ball"]) * 1.5 < min(areas["sun"])


def test_cue_frame_survives_tiling():
    for s in synthetic(10, seed=4):
        tiles = ComicTileProcessor().tiles(s.image, s.panel_boxes)
        for i, t in enumerate(tiles):
            edge = np.concatenate([t[:2].reshape(-1, 3), t[-2:].reshape(-1, 3)]).mean()
            if i + 1 == s.main_panel:
                assert edge > 250  # white frame, 3 tile px wide
            else:
                assert edge < 200
