import pytest
import torch

from focus_detr.layers.box_ops import inverse_sigmoid
from focus_detr.layers.mlp import MLP
from focus_detr.modeling.decoder import DINODecoder

SHAPES = [(6, 8), (3, 4)]
NUM_LAYERS = 3


def _inputs(grad=False, padded=True):
    torch.manual_seed(0)
    num_tokens = sum(h * w for h, w in SHAPES)
    queries = torch.randn(2, 7, 32)
    boxes = torch.rand(2, 7, 4) * 0.5 + 0.25
    memory = torch.randn(2, num_tokens, 32, requires_grad=grad)
    padding_mask = torch.zeros(2, num_tokens, dtype=torch.bool)
    valid_ratios = torch.ones(2, len(SHAPES), 2)
    if padded:  # the second image's right quarter is padding at every level
        start = 0
        for h, w in SHAPES:
            padding_mask[1, start:start + h * w].view(h, w)[:, w - w // 4:] = True
            start += h * w
        valid_ratios[1, :, 0] = torch.tensor([(w - w // 4) / w for _, w in SHAPES])
    spatial_shapes = torch.tensor(SHAPES)
    level_start_index = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    return queries, boxes, memory, padding_mask, spatial_shapes, level_start_index, valid_ratios


def _decoder(look_forward_twice=True):
    torch.manual_seed(1)
    decoder = DINODecoder(NUM_LAYERS, embed_dim=32, num_heads=4, feedforward_dim=64, num_levels=len(SHAPES),
                          look_forward_twice=look_forward_twice)
    box_heads = torch.nn.ModuleList(MLP(32, 32, 4, 3) for _ in range(NUM_LAYERS - 1))
    for head in box_heads:  # non-zero deltas, so that every refinement moves the boxes
        torch.nn.init.normal_(head.layers[-1].weight, std=0.1)
    return decoder.eval(), box_heads


def test_last_layer_only_returns_the_last_layer_of_all():
    """Inference asks for the last layer alone: the same state and input boxes, bit for bit."""
    decoder, box_heads = _decoder()
    inputs = _inputs()
    with torch.no_grad():
        hidden, layer_boxes = decoder(*inputs, box_heads)
        last_hidden, last_boxes = decoder(*inputs, box_heads, last_layer_only=True)
    assert hidden.shape == (NUM_LAYERS, 2, 7, 32) and layer_boxes.shape == (NUM_LAYERS, 2, 7, 4)
    assert last_hidden.shape == (1, 2, 7, 32) and last_boxes.shape == (1, 2, 7, 4)
    assert torch.equal(last_hidden[0], hidden[-1]) and torch.equal(last_boxes[0], layer_boxes[-1])


def test_each_layer_starts_from_the_previous_layers_refinement():
    decoder, box_heads = _decoder()
    captured = []
    for layer in decoder.layers:  # the un-normalised output each layer hands on
        layer.register_forward_hook(lambda module, args, output: captured.append(output))
    queries, boxes, *rest = _inputs()
    with torch.no_grad():
        _, layer_boxes = decoder(queries, boxes, *rest, box_heads)
    assert torch.equal(layer_boxes[0], boxes)
    for i in range(1, NUM_LAYERS):
        refined = (box_heads[i - 1](captured[i - 1]) + inverse_sigmoid(layer_boxes[i - 1])).sigmoid()
        assert torch.equal(layer_boxes[i], refined)
        assert not torch.equal(layer_boxes[i], layer_boxes[i - 1])


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_keeps_the_refinements_gradient(look_forward_twice):
    """With look-forward-twice, a layer's box loss also trains the previous layer's box head."""
    decoder, box_heads = _decoder(look_forward_twice)
    decoder.train()
    _, layer_boxes = decoder(*_inputs(grad=True), box_heads)
    assert layer_boxes.requires_grad == look_forward_twice
    if look_forward_twice:
        layer_boxes[1:].sum().backward()
        assert box_heads[0].layers[-1].weight.grad.abs().sum() > 0


def test_too_few_box_heads_are_refused():
    decoder, box_heads = _decoder()
    with pytest.raises(ValueError, match="1 box heads for 3 layers"):
        decoder(*_inputs(), box_heads[:1])
