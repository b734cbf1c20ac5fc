"""Sine position embeddings against the spec's formulas written out (section 1.5 and get_sine_pos_embed): the same
bits, since the decoder's query positions and the encoder's token positions feed the released weights."""
import math

import pytest
import torch

from focus_detr.layers.position_embedding import PositionEmbeddingSine, box_sine_embedding


def spec_frequencies(num_feats, temperature):
    return temperature ** (2 * torch.div(torch.arange(num_feats, dtype=torch.float32), 2, rounding_mode="floor")
                           / num_feats)


def spec_interleave(angles):
    """``(..., F)`` -> sin of the even features, cos of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


@pytest.mark.parametrize("settings", [(128, 10000.0, -0.5), (64, 20.0, 0.0)])
def test_feature_map_embedding_is_the_spec_formula(settings):
    num_feats, temperature, offset = settings
    mask = torch.zeros(2, 9, 11, dtype=torch.bool)
    mask[1, 6:] = True
    mask[1, :, 8:] = True
    embedding = PositionEmbeddingSine(num_feats, temperature, normalize=True, offset=offset)(mask)

    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    y = (y + offset) / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = (x + offset) / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    dim_t = spec_frequencies(num_feats, temperature)
    expected = torch.cat((spec_interleave(y[..., None] / dim_t), spec_interleave(x[..., None] / dim_t)), dim=3)
    assert embedding.shape == (2, 2 * num_feats, 9, 11)
    assert torch.equal(embedding, expected.permute(0, 3, 1, 2))


@pytest.mark.parametrize("num_coords", [2, 4])
def test_box_embedding_is_the_spec_formula_in_y_x_w_h_order(num_coords):
    torch.manual_seed(0)
    boxes = torch.rand(2, 7, num_coords)
    dim_t = spec_frequencies(128, 10000.0)
    per_coord = [spec_interleave(boxes[..., c, None] * (2 * math.pi) / dim_t) for c in range(num_coords)]
    per_coord[0], per_coord[1] = per_coord[1], per_coord[0]  # (x, y, ...) -> (y, x, ...)
    embedding = box_sine_embedding(boxes, 128)
    assert embedding.shape == (2, 7, 128 * num_coords)
    assert torch.equal(embedding, torch.cat(per_coord, -1))


def test_box_embedding_rejects_other_coordinate_counts():
    with pytest.raises(ValueError, match="2 or 4 coordinates"):
        box_sine_embedding(torch.rand(3, 5))


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_a_normalised_embedding_needs_a_positive_scale(scale):
    # 0 gave every token the same position, without a word
    with pytest.raises(ValueError, match=rf"^scale must be positive when normalize=True, got {scale}$"):
        PositionEmbeddingSine(normalize=True, scale=scale)
    PositionEmbeddingSine(normalize=False, scale=scale)  # not used unnormalised
