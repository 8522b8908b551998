"""The centred-feature diagnostic shifts exactly LLaVA's feature and nothing before it."""

import torch

from ov2_plugin.evaluation.scene_probe import tower_features
from ov2_plugin.experiments.centred_feature import centre_feature
from ov2_plugin.image_processing import make_image_processor
from ov2_plugin.loading import load_vision_model
from ov2_plugin.modeling_vision import Ov2VisionConfig, Ov2VisionModel


def test_centring_shifts_hidden_state_minus_two_by_its_mean_and_leaves_earlier_states(tmp_path):
    config = Ov2VisionConfig.from_preset("tiny", image_size=32)
    torch.manual_seed(0)
    Ov2VisionModel(config).save_pretrained(tmp_path / "tower")
    make_image_processor(config).save_pretrained(tmp_path / "tower")
    norms = centre_feature(tmp_path / "tower", tmp_path / "centred")
    assert norms["offset_norm"] > 0.1 and norms["offset_norm_after"] < 1e-4 * norms["offset_norm"]

    before, after = (load_vision_model(tmp_path / name).eval() for name in ("tower", "centred"))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = (m(pixels, output_hidden_states=True).hidden_states for m in (before, after))
    shift = b[-2] - a[-2]  # the same vector at every position of every image
    assert torch.allclose(shift, shift[0, 0].expand_as(shift), atol=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(a[:-2], b[:-2]))
    # what the offset is: the mean of the uncentred feature over the training scenes
    assert torch.allclose(-shift[0, 0], tower_features(tmp_path / "tower", seed=11, num_scenes=500).flatten(0, 1).mean(0), atol=1e-4)
