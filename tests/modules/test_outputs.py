"""DualEncoderOutput: the two towers' features and Hugging Face's logits from them."""

import math

import pytest
import torch
import torch.nn.functional as F

from torchflava.modules.outputs import DualEncoderOutput


def test_logits_are_the_scaled_cosine_similarities_both_ways():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(2, 5, generator=g), dim=-1)
    texts = F.normalize(torch.randn(3, 5, generator=g), dim=-1)
    out = DualEncoderOutput(images, texts, torch.tensor(math.log(20.0)))
    expected = torch.tensor([[20.0 * float(i @ t) for t in texts] for i in images])
    torch.testing.assert_close(out.logits_per_image, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.logits_per_text, expected.T, rtol=1e-6, atol=1e-6)
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)


def test_gradients_reach_the_features_and_the_temperature():
    images, texts = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    scale = torch.tensor(0.5, requires_grad=True)
    DualEncoderOutput(images, texts, scale).logits_per_text.sum().backward()
    torch.testing.assert_close(images.grad, math.exp(0.5) * texts.detach().sum(0).expand(2, 4))
    assert scale.grad is not None and float(scale.grad) == pytest.approx(
        float(math.exp(0.5) * (images.detach() @ texts.detach().T).sum()), rel=1e-6
    )


@pytest.mark.parametrize(
    "images, texts, missing",
    [(None, torch.ones(1, 2), "image_features"), (None, None, "image_features and text_features")],
)
def test_logits_without_both_towers_name_what_is_missing(images, texts, missing):
    with pytest.raises(ValueError) as caught:
        _ = DualEncoderOutput(images, texts, torch.tensor(0.0)).logits_per_text
    assert str(caught.value) == f"logits: expected image and text features, got {missing}=None"
