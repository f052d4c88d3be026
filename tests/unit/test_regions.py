"""Strip / Scene geometry and their input errors (pure PIL, no model)."""
import pytest
from PIL import Image

from gazekit import Scene, Strip, panel_question


def _panels(n=6, w=100, h=80):
    return [Image.new("RGB", (w + 10 * i, h), (40 * i, 10, 10)) for i in range(n)]


def test_from_panels_layout_matches_the_paper():
    s = Strip.from_panels(_panels(), captions=list("abcdef"))
    assert s.image.height == 256
    xs = [b[0] for b in s.panel_boxes]
    assert xs[0] == 0
    for (x0, _, x1, _), nxt in zip(s.panel_boxes, s.panel_boxes[1:]):
        assert (x1 - x0) % 32 == 0 and nxt[0] - x1 == 6  # widths multiples of 32, 6 px white gap
    assert s.image.width == s.panel_boxes[-1][2]
    assert s.image.getpixel((int(s.panel_boxes[0][2]) + 2, 10)) == (255, 255, 255)
    assert s.captions == list("abcdef")
    # token boxes tile the whole width without overlap: every token belongs to exactly one panel
    tb = s.token_boxes
    assert tb[0][0] == 0 and tb[-1][2] == s.image.width
    assert all(a[2] == b[0] for a, b in zip(tb, tb[1:]))
    assert s.panel(2).size == (int(s.panel_boxes[1][2] - s.panel_boxes[1][0]), 256)


def test_wrong_number_of_panels_names_the_fix():
    with pytest.raises(ValueError, match="exactly 6 panels"):
        Strip.from_panels(_panels(5))
    with pytest.raises(ValueError, match="one caption per panel"):
        Strip.from_panels(_panels(), captions=["a"])


def test_scene_boxes_named_and_numbered():
    img = Image.new("RGB", (200, 100))
    s = Scene(img, {"dog": (0, 0, 50, 50), "ball": (100, 10, 150, 90)})
    assert s.names == ["dog", "ball"] and s.region_index("ball") == 1 and s.region_index(1) == 0
    with pytest.raises(ValueError, match="no region named"):
        s.region_index("cat")
    with pytest.raises(ValueError, match="1-based"):
        s.region_index(0)
    with pytest.raises(ValueError, match="outside the 200x100 image"):
        Scene(img, [(0, 0, 250, 50)])


def test_panel_question_is_the_papers_prompt():
    assert panel_question(3) == ("Look carefully at this six-panel comic strip. What is happening in the third panel "
                                 "from the left? Answer briefly.")
    with pytest.raises(ValueError):
        panel_question(7)
