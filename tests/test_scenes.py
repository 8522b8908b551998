import numpy as np

from ov2_plugin.data.scenes import COLOURS, make_scene
from ov2_plugin.evaluation.captioning import caption_groups, scene_groups


def test_scenes_are_deterministic_per_seed_and_index():
    a, b = make_scene(3, 17), make_scene(3, 17)
    assert a == b
    assert np.array_equal(np.asarray(a.render(64)), np.asarray(b.render(64)))
    assert make_scene(4, 17) != a


def test_any_resolution():
    scene = make_scene(0, 5)
    for size in (32, 64, 224):
        assert scene.render(size).size == (size, size)


def test_caption_names_every_group_and_the_word():
    for i in range(50):
        scene = make_scene(0, i)
        assert caption_groups(scene.caption) == scene_groups(scene)
        if scene.word:
            assert f'"{scene.word}"' in scene.caption and scene.word_place in scene.caption


def test_objects_are_drawn_in_their_colour():
    scene = make_scene(0, 2)
    pixels = np.asarray(scene.render(96)).reshape(-1, 3)
    for group in scene.groups:
        assert (np.abs(pixels - np.array(COLOURS[group.colour])).sum(1) == 0).sum() > 20


def test_scenes_vary():
    captions = {make_scene(0, i).caption for i in range(200)}
    assert len(captions) > 150


def test_attribute_metric_tells_template_from_content():
    scene = make_scene(0, 6)
    assert caption_groups(scene.caption) == scene_groups(scene)
    assert caption_groups("two red circles.") != scene_groups(scene) or scene.caption.startswith("two red circles.")
    assert caption_groups("one blue square on the left and three green triangles.") == {
        ("one", "blue", "square"), ("three", "green", "triangle")}
