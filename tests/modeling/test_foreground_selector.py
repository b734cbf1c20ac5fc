import pytest
import torch

from focus_detr.modeling import ForegroundTokenSelector

SHAPES = [(8, 10), (4, 5), (2, 3), (1, 2)]
NUM_TOKENS = sum(h * w for h, w in SHAPES)


def _selector(**kwargs):
    torch.manual_seed(0)
    return ForegroundTokenSelector(embed_dim=32, **kwargs).eval()


def _padding(valid_counts):
    mask = torch.zeros(len(valid_counts), NUM_TOKENS, dtype=torch.bool)
    for i, valid in enumerate(valid_counts):
        mask[i, valid:] = True
    return mask


def test_layer_counts_follow_the_official_float32_arithmetic():
    selector = _selector()
    # The fixture's training batch: 1227 and 1154 valid tokens -> budgets 614 / 578, layer counts from 614.
    focus = (torch.tensor([1227, 1154]) * 0.5).int() + 1
    assert focus.tolist() == [614, 578]
    assert selector.layer_token_counts(focus, num_tokens=1602) == [614, 491, 368, 368, 245, 122]


def test_counts_never_exceed_the_tokens_of_the_image():
    selector = _selector(keep_ratio=1.0, cascade_keep_ratios=[1.0, 1.0])
    memory = torch.randn(1, NUM_TOKENS, 32)
    selection = selector(memory, _padding([NUM_TOKENS]), SHAPES)
    assert selection.focus_token_nums.tolist() == [NUM_TOKENS]
    assert selection.num_selected_tokens_per_layer == [NUM_TOKENS, NUM_TOKENS]


def test_selection_is_a_nested_cascade_sorted_by_score():
    selector = _selector(cascade_keep_ratios=[1.0, 0.5, 0.25])
    selection = selector(torch.randn(2, NUM_TOKENS, 32), _padding([NUM_TOKENS, NUM_TOKENS]), SHAPES)
    k0, k1, k2 = selection.num_selected_tokens_per_layer
    assert (k0, k1, k2) == (NUM_TOKENS // 2 + 1, (NUM_TOKENS // 2 + 1) // 2, (NUM_TOKENS // 2 + 1) // 4)
    for b in range(2):
        scores = selection.selection_scores[b, selection.foreground_inds[0][b]]
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.equal(selection.foreground_inds[1][b], selection.foreground_inds[0][b, :k1])
        assert torch.equal(selection.foreground_inds[2][b], selection.foreground_inds[0][b, :k2])


def test_padding_ranks_last_and_counts_follow_each_image():
    selector = _selector(cascade_keep_ratios=[1.0])
    mask = _padding([NUM_TOKENS, 40])
    selection = selector(torch.randn(2, NUM_TOKENS, 32), mask, SHAPES)
    assert selection.focus_token_nums.tolist() == [NUM_TOKENS // 2 + 1, 21]
    # The second image's own budget (21 tokens) holds only valid tokens.
    assert not mask[1, selection.foreground_inds[0][1, :21]].any()
    assert torch.all(selection.selection_scores[1, 40:] == selection.selection_scores.min())
    # Raw logits stay unmasked for the foreground loss.
    assert torch.equal(selection.foreground_logits.squeeze(-1)[~mask], selection.selection_scores[~mask])


def test_without_modulation_levels_are_scored_independently():
    selector = _selector(top_down_modulation=False)
    memory = torch.randn(1, NUM_TOKENS, 32)
    changed = memory.clone()
    changed[:, -2:] += 3.0  # the coarsest level only
    finest = slice(0, SHAPES[0][0] * SHAPES[0][1])
    assert torch.equal(selector.score_tokens(memory, SHAPES)[:, finest], selector.score_tokens(changed, SHAPES)[:, finest])


def test_top_down_modulation_with_a_positive_factor_changes_no_score_beyond_rounding():
    # what docs/ablation.md reports: 1 + weight * coarse logit > 0 everywhere (small weights, as trained) -> the
    # LayerNorm that starts the predictor removes the scale
    selector = _selector(top_down_modulation=True)
    with torch.no_grad():
        selector.modulation_weights.fill_(0.01)
    memory = torch.randn(1, NUM_TOKENS, 32)
    modulated = selector.score_tokens(memory, SHAPES)
    selector.top_down_modulation = False
    torch.testing.assert_close(modulated, selector.score_tokens(memory, SHAPES), rtol=1e-5, atol=1e-5)


def test_top_down_modulation_changes_fine_scores():
    # The modulation scales each token by (1 + weight * coarse logit); the predictor's LayerNorm cancels a positive
    # scale, so the coarse level acts where the factor turns negative: large weights make that visible.
    selector = _selector(top_down_modulation=True)
    with torch.no_grad():
        selector.modulation_weights.fill_(-10.0)
    memory = torch.randn(1, NUM_TOKENS, 32)
    modulated = selector.score_tokens(memory, SHAPES)
    selector.top_down_modulation = False
    plain = selector.score_tokens(memory, SHAPES)
    coarsest = slice(NUM_TOKENS - 2, NUM_TOKENS)
    assert torch.equal(modulated[:, coarsest], plain[:, coarsest])
    assert not torch.allclose(modulated[:, :-2], plain[:, :-2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"cascade_keep_ratios": []}, "cascade_keep_ratios"),
        ({"cascade_keep_ratios": [1.0, 0.0]}, "cascade_keep_ratios"),
        ({"cascade_keep_ratios": [1.2]}, "cascade_keep_ratios"),
        ({"keep_ratio": None}, r"keep_ratio must be a number in \(0, 1\], got None"),  # a config's null: a TypeError
        ({"cascade_keep_ratios": None}, "cascade_keep_ratios must be a non-empty list .* got None"),
        ({"cascade_keep_ratios": [1.0, None]}, r"got \[1.0, None\]"),
        # eager inference silently kept the first layer's count in every later layer, the ONNX graph the counts
        # asked for: their detections differed without a word
        ({"cascade_keep_ratios": [0.2, 0.4, 0.6]}, r"must not grow from one encoder layer to the next .* got "
                                                   r"\[0.2, 0.4, 0.6\]"),
    ],
)
def test_bad_ratios_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ForegroundTokenSelector(embed_dim=32, **kwargs)


def test_keep_ratios_can_be_changed_on_a_built_model():
    selector = _selector(cascade_keep_ratios=[1.0, 0.5])
    selector.set_keep_ratios(keep_ratio=1.0)
    assert (selector.keep_ratio, selector.cascade_keep_ratios) == (1.0, [1.0, 0.5])
    selection = selector(torch.randn(1, NUM_TOKENS, 32), _padding([NUM_TOKENS]), SHAPES)
    assert selection.num_selected_tokens_per_layer == [NUM_TOKENS, NUM_TOKENS // 2]
    with pytest.raises(ValueError, match="one entry per encoder layer"):
        selector.set_keep_ratios(cascade_keep_ratios=[1.0])
    with pytest.raises(ValueError, match="keep_ratio"):
        selector.set_keep_ratios(keep_ratio=0.0)
    assert (selector.keep_ratio, selector.cascade_keep_ratios) == (1.0, [1.0, 0.5])


def test_assigned_keep_ratios_are_checked_as_the_constructor_checks_them():
    # the Python form of the config override: a negative ratio kept no token, 5.0 all of them, without a word
    selector = _selector(cascade_keep_ratios=[1.0, 0.5])
    selector.keep_ratio = 0.25
    selector.cascade_keep_ratios = (1.0, 0.2)
    assert (selector.keep_ratio, selector.cascade_keep_ratios) == (0.25, [1.0, 0.2])
    selection = selector(torch.randn(1, NUM_TOKENS, 32), None, SHAPES)
    assert selection.num_selected_tokens_per_layer == [NUM_TOKENS // 4 + 1, (NUM_TOKENS // 4 + 1) // 5]
    for value, shown in ((-1.0, "-1.0"), (5.0, "5.0"), (float("nan"), "nan"), ("0.3", "'0.3'"), (True, "True")):
        with pytest.raises(ValueError, match=rf"^ForegroundTokenSelector: keep_ratio must be a number in \(0, 1\], got "
                                             rf"{shown}$"):
            selector.keep_ratio = value
    for value, message in (([1.0], "one entry per encoder layer"), (0.5, r"must be a non-empty list .* got 0.5$"),
                           (None, "^ForegroundTokenSelector: cascade_keep_ratios cannot be None$")):
        with pytest.raises(ValueError, match=message):
            selector.cascade_keep_ratios = value
    with pytest.raises(ValueError, match="^ForegroundTokenSelector: keep_ratio cannot be None$"):
        selector.keep_ratio = None  # (set_keep_ratios' None keeps the value: assigned, it did so without a word)
    selector.cascade_keep_ratios[0] = -5.0  # a copy: the model's ratios change only through the checks
    assert (selector.keep_ratio, selector.cascade_keep_ratios) == (0.25, [1.0, 0.2])


def test_a_selector_pickled_whole_before_the_ratios_were_properties_loads():
    import pickle

    selector = _selector(keep_ratio=0.3)
    state = selector.__getstate__()
    state["keep_ratio"], state["cascade_keep_ratios"] = state.pop("_keep_ratio"), state.pop("_cascade_keep_ratios")
    restored = ForegroundTokenSelector.__new__(ForegroundTokenSelector)
    restored.__setstate__(state)
    assert (restored.keep_ratio, restored.cascade_keep_ratios) == (0.3, selector.cascade_keep_ratios)
    assert pickle.loads(pickle.dumps(selector)).keep_ratio == 0.3


def test_host_budgets_follow_the_same_float32_arithmetic_as_the_tensor_ones():
    # eager inference counts the budgets on the host from the image sizes; an exported graph counts them as tensors
    from focus_detr.modeling.foreground_selector import focus_token_nums_of, layer_token_counts

    ratios = [1.0, 0.8, 0.6, 0.6, 0.4, 0.2]
    for valid in ([1227, 1154], [22223], [33, 1], [59999, 40001, 7]):
        for keep_ratio in (0.5, 0.3, 0.7, 1.0):
            num_tokens = max(valid) + 3
            as_tensor = focus_token_nums_of(torch.tensor(valid), keep_ratio, num_tokens)
            on_host = focus_token_nums_of(valid, keep_ratio, num_tokens)
            assert as_tensor.tolist() == on_host
            assert layer_token_counts(as_tensor, ratios, num_tokens) == layer_token_counts(on_host, ratios, num_tokens)
    assert layer_token_counts([614, 578], ratios, 1602) == [614, 491, 368, 368, 245, 122]


def test_eager_layers_keep_views_of_one_ranking():
    selector = _selector(cascade_keep_ratios=[1.0, 0.5])
    selection = selector(torch.randn(1, NUM_TOKENS, 32), None, SHAPES, [NUM_TOKENS])
    first, second = selection.foreground_inds
    assert second.data_ptr() == first.data_ptr() and torch.equal(second, first[:, : second.shape[1]])
    assert selection.focus_token_counts == selection.focus_token_nums.tolist() == [NUM_TOKENS // 2 + 1]


def test_random_ranking_keeps_the_same_counts_and_no_padding():
    mask = _padding([NUM_TOKENS, 40])
    memory = torch.randn(2, NUM_TOKENS, 32)
    by_score = _selector(cascade_keep_ratios=[1.0, 0.5])(memory, mask, SHAPES)
    torch.manual_seed(1)
    at_random = _selector(cascade_keep_ratios=[1.0, 0.5], token_ranking="random")(memory, mask, SHAPES)
    assert at_random.num_selected_tokens_per_layer == by_score.num_selected_tokens_per_layer
    assert torch.equal(at_random.focus_token_nums, by_score.focus_token_nums)
    assert not mask[1, at_random.foreground_inds[0][1, :21]].any()  # the image's own budget: valid tokens only
    assert set(at_random.foreground_inds[0][0].tolist()) != set(by_score.foreground_inds[0][0].tolist())
    # the scores the encoder's fine-grained ranking reads stay the foreground logits
    assert torch.equal(at_random.selection_scores, by_score.selection_scores)


def test_unknown_token_ranking_is_rejected():
    with pytest.raises(ValueError, match="token_ranking must be one of foreground, random"):
        _selector(token_ranking="best")
