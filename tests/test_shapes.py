import numpy as np
import pytest

import lab
from lab import shapes


def test_sample_is_deterministic_and_captions_follow_the_grammar():
    a_img, a_cap, a_scenes = shapes.sample(3, 20)
    b_img, b_cap, _ = shapes.sample(3, 20)
    assert a_img.shape == (20, 64, 64, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert not np.array_equal(a_img, shapes.sample(4, 20)[0])
    for cap, scene in zip(a_cap, a_scenes):
        assert shapes.parse_caption(cap) == scene
        assert not shapes.is_held_out(cap)


def test_grammar_enumeration_and_held_out_split():
    captions = [s.caption() for s in shapes.all_scenes()]
    assert len(captions) == len(set(captions)) == 828
    held = shapes.held_out_prompts(50)
    assert len(set(held)) == 50 and all(shapes.is_held_out(c) for c in held)
    assert all(shapes.is_held_out(c) for c in shapes.sample(0, 10, split="held-out")[1])
    with pytest.raises(lab.LabError, match="exceeds"):
        shapes.held_out_prompts(10_000)


@pytest.mark.parametrize("bad, match", [
    ("a photo of an astronaut", "not a shape-scene caption"),
    ("a purple circle on the left, white background", "unknown colour 'purple'"),
    ("a red hexagon on the left, white background", "unknown shape 'hexagon'"),
    ("a red circle on the left, pink background", "unknown background 'pink'"),
    ("a red circle on the left and a red square on the right, white background", "different colours"),
    ("a red circle on the left and a blue square at the top, white background", "left/right or top/bottom"),
])
def test_parse_caption_rejects_what_the_grammar_does_not_say(bad, match):
    with pytest.raises(lab.LabError, match=match):
        shapes.parse_caption(bad)


def test_detector_accuracy_on_generator_ground_truth():
    acc = shapes.detector_accuracy(n=300)
    assert set(acc) == set(shapes.ATTRIBUTES)
    assert min(acc.values()) >= 0.95, acc


def test_detector_reads_blurred_noisy_scenes():
    from PIL import Image, ImageFilter

    images, captions, _ = shapes.sample(11, 100, split="all")
    rng = np.random.default_rng(0)
    soft = [np.clip(np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(1.5)), dtype=float)
                    + rng.normal(0, 12, i.shape), 0, 255).astype(np.uint8) for i in images]
    assert lab.adherence(soft, captions).overall >= 0.9


def test_adherence_scores_each_attribute():
    scene = shapes.Scene("white", [shapes.Shape("red", "circle", "left"), shapes.Shape("blue", "square", "right")])
    img = shapes.render(scene)
    assert shapes.adherence(img, scene.caption()).exact
    wrong_shape = "a red triangle on the left and a blue square on the right, white background"
    s = shapes.adherence(img, wrong_shape).scores
    assert s["shape"] == 0.5 and s["colour"] == s["position"] == s["background"] == s["count"] == 1.0
    swapped = "a blue square on the left and a red circle on the right, white background"
    assert shapes.adherence(img, swapped).scores["position"] == 0.0
    assert shapes.adherence(img, "a red circle on the left and a blue square on the right, black background"
                            ).scores["background"] == 0.0
    blank = np.full((64, 64, 3), 245, np.uint8)
    s = shapes.adherence(blank, scene.caption()).scores
    assert s["colour"] == s["shape"] == s["position"] == s["count"] == 0.0 and s["background"] == 1.0


def test_adherence_report_aggregates():
    images, captions, _ = shapes.sample(5, 6, split="all")
    noise = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    good, bad = lab.adherence(list(images), captions), lab.adherence(list(noise), captions)
    assert good.per_attribute()["exact"] == 1.0 and good.overall == 1.0
    assert bad.overall < 0.5
    frame = bad.to_frame()
    assert list(frame.index) == captions and "overall" in frame
    assert "Prompt adherence over 6 images" in bad._repr_markdown_()
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        lab.adherence(list(images[:2]), captions[:1])
