import torch

from focus_detr.modeling import CascadeDualAttentionEncoder, ForegroundSelection
from focus_detr.modeling.transformer import encoder_reference_points

SHAPES = [(6, 6), (3, 3)]
NUM_TOKENS = 45


def _run(focus_token_nums, layer_counts, num_fine_grained_tokens=5):
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
        foreground_inds=[order[:, :k] for k in layer_counts],
    )
    spatial_shapes = torch.tensor(SHAPES)
    level_start_index = torch.tensor([0, 36])
    reference_points = encoder_reference_points(SHAPES, torch.ones(2, 2, 2))
    category_head = torch.nn.Linear(32, 3)
    with torch.no_grad():
        memory, fine = encoder(
            tokens, torch.randn(2, NUM_TOKENS, 32), torch.zeros(2, NUM_TOKENS, dtype=torch.bool), reference_points,
            spatial_shapes, level_start_index, selection, category_head,
        )
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
