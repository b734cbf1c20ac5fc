import torch

from focus_detr.modeling import CascadeDualAttentionEncoder, ForegroundSelection
from focus_detr.modeling.token_layout import encoder_reference_points

SHAPES = [(6, 6), (3, 3)]
NUM_TOKENS = 45


def _run(focus_token_nums, layer_counts, num_fine_grained_tokens=5, grad=False, layer_orders=None):
    torch.manual_seed(0)
    encoder = CascadeDualAttentionEncoder(
        num_layers=len(layer_counts), embed_dim=32, num_heads=4, feedforward_dim=64, num_levels=2,
        num_fine_grained_tokens=num_fine_grained_tokens,
    ).eval()
    tokens = torch.randn(2, NUM_TOKENS, 32)
    scores = torch.randn(2, NUM_TOKENS)
    order = scores.argsort(dim=1, descending=True)
    selection = ForegroundSelection(
        foreground_logits=scores[..., None],
        selection_scores=scores,
        focus_token_nums=torch.tensor(focus_token_nums),
        foreground_inds=[o[:, :k] for o, k in zip(layer_orders or [order] * len(layer_counts), layer_counts)],
    )
    spatial_shapes = torch.tensor(SHAPES)
    level_start_index = torch.tensor([0, 36])
    reference_points = encoder_reference_points(SHAPES, torch.ones(2, 2, 2))
    category_head = torch.nn.Linear(32, 3)
    tokens.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        memory, fine = encoder(
            tokens, torch.randn(2, NUM_TOKENS, 32), torch.zeros(2, NUM_TOKENS, dtype=torch.bool), reference_points,
            spatial_shapes, level_start_index, selection, category_head,
        )
    if grad:
        memory.square().sum().backward()
        return tokens.grad, memory.detach(), fine, order
    return tokens, memory, fine, order


def test_only_each_images_own_foreground_budget_is_updated():
    tokens, memory, _, order = _run(focus_token_nums=[20, 8], layer_counts=[20, 12])
    changed = (memory != tokens).any(-1)
    for b, budget in enumerate([20, 8]):
        kept = torch.zeros(NUM_TOKENS, dtype=torch.bool)
        kept[order[b, :budget]] = True
        assert changed[b, kept].all()
        assert not changed[b, ~kept].any()  # never-selected tokens keep the raw neck features


def test_fine_grained_tokens_come_from_the_layers_foreground_set():
    _, _, fine, order = _run(focus_token_nums=[20, 20], layer_counts=[20, 3], num_fine_grained_tokens=5)
    assert [f.shape[1] for f in fine] == [5, 3]  # clamped to the 3 tokens the second layer keeps
    for layer, k in enumerate([20, 3]):
        for b in range(2):
            assert set(fine[layer][b].tolist()) <= set(order[b, :k].tolist())



def test_working_on_the_first_layers_tokens_equals_the_full_sequence_form(monkeypatch):
    import focus_detr.modeling.encoder as encoder_module

    for grad in (False, True):
        fast = _run([20, 8], [20, 12, 4], grad=grad)
        with monkeypatch.context() as patch:
            patch.setattr(encoder_module, "_positions_within", lambda *args: None)
            full = _run([20, 8], [20, 12, 4], grad=grad)
        assert torch.equal(fast[1], full[1])  # memory
        assert all(torch.equal(a, b) for a, b in zip(fast[2], full[2]))  # fine-grained indices
        if grad:
            assert torch.allclose(fast[0], full[0], rtol=1e-6, atol=1e-7)  # gradient of the tokens


def test_a_later_layer_token_outside_the_first_layers_set_is_still_updated():
    # (possible only through score ties in the selector) the encoder then takes the full-sequence form
    torch.manual_seed(3)
    other = torch.randn(2, NUM_TOKENS).argsort(dim=1, descending=True)
    order = _run([20, 8], [20, 8])[3]
    tokens, memory, _, _ = _run([20, 8], [20, 8], layer_orders=[order, other])
    outside = ~torch.isin(other[1, :8], order[1, :20])
    assert outside.any()
    assert (memory[1, other[1, :8][outside]] != tokens[1, other[1, :8][outside]]).any(-1).all()


def test_without_fine_grained_attention_no_token_is_fine_grained_and_no_weights_exist():
    tokens, memory, fine, _ = _run(focus_token_nums=[20, 20], layer_counts=[20, 12], num_fine_grained_tokens=0)
    assert [f.shape for f in fine] == [(2, 0), (2, 0)]
    _, default_memory, _, _ = _run(focus_token_nums=[20, 20], layer_counts=[20, 12])
    assert not torch.allclose(memory, default_memory)  # the self-attention step is really skipped
    encoder = CascadeDualAttentionEncoder(num_layers=1, embed_dim=32, num_heads=4, num_fine_grained_tokens=0)
    assert not any("fine_grained" in name for name, _ in encoder.named_parameters())


def test_foreground_only_scoring_picks_the_highest_foreground_scores():
    torch.manual_seed(0)
    encoder = CascadeDualAttentionEncoder(
        num_layers=1, embed_dim=32, num_heads=4, feedforward_dim=64, num_levels=2, num_fine_grained_tokens=5,
        fine_grained_scoring="foreground",
    ).eval()
    layer = encoder.layers[0]
    queries, foreground_scores = torch.randn(2, 20, 32), torch.randn(2, 20)
    category_head = torch.nn.Linear(32, 3)
    ranking = layer.fine_grained_ranking(queries, foreground_scores, category_head)
    assert torch.equal(layer.select_fine_grained(ranking), foreground_scores.topk(5, dim=1)[1])
    multi_category = CascadeDualAttentionEncoder(num_layers=1, embed_dim=32, num_heads=4).layers[0]
    assert not torch.equal(multi_category.fine_grained_ranking(queries, foreground_scores, category_head), ranking)


def test_unknown_fine_grained_settings_are_one_line_errors():
    import pytest

    with pytest.raises(ValueError, match="fine_grained_scoring must be one of multi_category, foreground"):
        CascadeDualAttentionEncoder(num_layers=1, embed_dim=32, num_heads=4, fine_grained_scoring="class")
    with pytest.raises(ValueError, match="num_fine_grained_tokens must be an integer >= 0"):
        CascadeDualAttentionEncoder(num_layers=1, embed_dim=32, num_heads=4, num_fine_grained_tokens=-1)


def test_an_assigned_fine_grained_token_count_is_checked_and_reaches_every_layer():
    # the encoder had no such attribute (an assignment made a new one that nothing read), and a layer took -5 to
    # fail in the forward ("selected index k out of range")
    import re

    import pytest

    encoder = CascadeDualAttentionEncoder(num_layers=2, embed_dim=32, num_heads=4, num_fine_grained_tokens=5)
    encoder.num_fine_grained_tokens = 3
    assert encoder.num_fine_grained_tokens == 3
    assert [layer.num_fine_grained_tokens for layer in encoder.layers] == [3, 3]
    for value in (-5, 2.5, None, True):
        message = (r"num_fine_grained_tokens must be an integer >= 0 \(0: no fine-grained attention\), got "
                   + re.escape(repr(value)) + "$")
        with pytest.raises(ValueError, match=r"^CascadeDualAttentionEncoder \(model.transformer.encoder\): " + message):
            encoder.num_fine_grained_tokens = value
        with pytest.raises(ValueError, match="^" + message):
            encoder.layers[1].num_fine_grained_tokens = value
    assert [layer.num_fine_grained_tokens for layer in encoder.layers] == [3, 3]
    encoder.num_fine_grained_tokens = 0  # an ablation at evaluation, then back
    encoder.num_fine_grained_tokens = 5
    assert [layer.num_fine_grained_tokens for layer in encoder.layers] == [5, 5]
    without = CascadeDualAttentionEncoder(num_layers=1, embed_dim=32, num_heads=4, num_fine_grained_tokens=0)
    with pytest.raises(ValueError, match="the layer was built without fine-grained attention"):
        without.num_fine_grained_tokens = 10
