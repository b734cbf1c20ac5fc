import pytest
import torch

from conftest import build_tiny_model, fixture_inputs


def test_inference_returns_instances_in_the_requested_size(tiny_model, parity_fixture):
    items = fixture_inputs(parity_fixture)
    results = tiny_model(items[:1])
    instances = results[0]["instances"]
    assert instances.image_size == (400, 552)
    assert len(instances) == 300
    boxes = instances.pred_boxes.tensor
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 552 and boxes[:, 3].max() <= 400
    assert torch.all(instances.scores[:-1] >= instances.scores[1:])
    expected = parity_fixture["eval_outputs"]["single"][0]["postprocessed"][0]
    assert torch.allclose(boxes, expected["boxes_xyxy"], atol=1e-3)


def test_batched_evaluation_masks_padding(tiny_model, parity_fixture):
    # Deliberate deviation from the official code, which marks no padding at test time, so a padded image's
    # foreground budget could be spent on padding.
    items = fixture_inputs(parity_fixture)
    with torch.no_grad():
        images = tiny_model.preprocess_image(items)
        out = tiny_model.run_transformer(images)
    selection = out.selection
    num_rows_level0 = out.spatial_shapes[0, 0]
    assert num_rows_level0 == 34  # the padded canvas 270 x 276
    padded = selection.selection_scores == selection.selection_scores.min()
    assert padded[0].sum() > 0 and padded[1].sum() > 0  # both images are padded on one side
    for i, budget in enumerate(selection.focus_token_nums.tolist()):
        assert not padded[i, selection.foreground_inds[0][i, :budget]].any()
    assert selection.focus_token_nums.tolist() == [614, 578]  # from the valid tokens only: 1227 and 1154


def test_token_selection_is_reported_per_image(tiny_model, parity_fixture):
    items = fixture_inputs(parity_fixture)
    result = tiny_model.forward_inference(items[:1], return_token_selection=True)[0]
    selection = result["token_selection"]
    assert result["image_size"] == (200, 276)
    assert selection["spatial_shapes"].tolist() == [[25, 35], [13, 18], [7, 9], [4, 5]]
    assert selection["foreground_logits"].shape == (1192,)
    assert [len(i) for i in selection["foreground_inds"]] == [597, 477]
    assert [len(i) for i in selection["fine_grained_inds"]] == [300, 300]
    assert result["level_strides"] == (8, 16, 32, 64)  # where the token pictures place each level


@pytest.mark.parametrize("size", [(32, 32), (40, 300), (300, 24)])
def test_small_and_elongated_images_clamp_token_and_query_counts(size):
    # The official code crashes when fewer than 300 tokens or 50/900 queries are available.
    torch.manual_seed(0)
    model = build_tiny_model().eval()
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    instances = model([{"image": image}])[0]["instances"]
    assert instances.image_size == size
    assert 0 < len(instances) <= 300


def test_keep_ratios_can_be_overridden_at_evaluation_time(parity_fixture):
    from focus_detr.checkpoint import FocusDETRCheckpointer

    model = build_tiny_model(
        **{
            "model.transformer.foreground_selector.keep_ratio": 0.25,
            "model.transformer.foreground_selector.cascade_keep_ratios": [1.0, 0.5],
        }
    ).eval()
    FocusDETRCheckpointer(model).load_model_state(parity_fixture["state_dict"])
    item = fixture_inputs(parity_fixture)[0]
    selection = model.forward_inference([item], return_token_selection=True)[0]["token_selection"]
    assert [len(i) for i in selection["foreground_inds"]] == [299, 149]  # int(1192 * 0.25) + 1 = 299


def test_training_with_an_image_without_boxes_gives_finite_losses(parity_fixture):
    torch.manual_seed(0)
    model = build_tiny_model().train()
    items = fixture_inputs(parity_fixture, with_instances=True)
    items[1]["instances"] = items[1]["instances"][:0]
    losses = model(items)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = fixture_inputs(parity_fixture, with_instances=True)
    for item in empty:
        item["instances"] = item["instances"][:0]
    losses = model(empty)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_a_training_step_draws_its_random_numbers_in_the_official_order(parity_fixture, monkeypatch):
    """The backbone (whose stochastic depth draws, for Swin) runs before the denoising noise is drawn, as in the
    official forward: a run seeded as an official one draws the same numbers."""
    model = build_tiny_model().train()
    calls = []
    backbone, denoising = model.backbone.forward, model.denoising.forward
    monkeypatch.setattr(model.backbone, "forward", lambda *a, **k: calls.append("backbone") or backbone(*a, **k))
    monkeypatch.setattr(model.denoising, "forward", lambda *a, **k: calls.append("denoising") or denoising(*a, **k))
    model(fixture_inputs(parity_fixture, with_instances=True))
    assert calls == ["backbone", "denoising"]


def test_a_few_training_steps_reduce_the_loss_on_cpu(parity_fixture):
    torch.manual_seed(0)
    model = build_tiny_model().train()
    items = fixture_inputs(parity_fixture, with_instances=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    totals = []
    for _ in range(6):
        torch.manual_seed(1)  # same denoising noise every step, so the losses are comparable
        loss = sum(model(items).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(float(loss))
    assert totals[-1] < 0.9 * totals[0], totals


def test_without_aux_loss_only_the_last_layer_trains_and_every_parameter_still_gets_a_gradient(parity_fixture):
    from focus_detr.modeling.criterion import loss_keys

    items = fixture_inputs(parity_fixture, with_instances=True)
    losses = {}
    for aux_loss in (True, False):
        torch.manual_seed(0)
        model = build_tiny_model(**{"model.aux_loss": aux_loss}).train()
        torch.manual_seed(1)
        losses[aux_loss] = model(items)
    assert set(losses[False]) == set(loss_keys(2, aux_loss=False))
    for key, value in losses[False].items():  # the same weights, noise and matching: the same last-layer losses
        assert torch.equal(value, losses[True][key]), key
    sum(losses[False].values()).backward()
    # DDP (find_unused_parameters=False) needs a gradient for every parameter; the earlier layers' heads get zeros
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.class_embed[0].weight.grad.abs().sum() == 0
    assert model.class_embed[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["full", "no_top_down", "no_cascade", "no_fine_grained_attention",
                                     "foreground_only_scoring", "random_selection", "dense"])
def test_every_ablation_variant_gives_each_trainable_parameter_a_gradient(parity_fixture, variant):
    """DDP (find_unused_parameters=False, the default) stops at the second step of a multi-process run when a
    trainable parameter got no gradient: without top-down modulation, its weights did."""
    from detectron2.config import LazyConfig, instantiate

    from conftest import TINY_CONFIG
    from focus_detr.analysis.ablation import variant_overrides

    cfg = LazyConfig.load(str(TINY_CONFIG))
    model = instantiate(LazyConfig.apply_overrides(cfg, variant_overrides(cfg, variant)).model).train()
    sum(model(fixture_inputs(parity_fixture, with_instances=True)).values()).backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_attention_and_feed_forward_dropout_are_set_apart():
    model = build_tiny_model(**{"model.transformer.encoder.attn_dropout": 0.1,
                                "model.transformer.encoder.ffn_dropout": 0.2,
                                "model.transformer.decoder.attn_dropout": 0.3,
                                "model.transformer.decoder.ffn_dropout": 0.4})
    encoder, decoder = model.transformer.encoder.layers[0], model.transformer.decoder.layers[0]
    assert (encoder.fine_grained_attn.dropout, encoder.fine_grained_dropout.p, encoder.cross_attn.dropout.p,
            encoder.ffn.dropout.p) == (0.1, 0.1, 0.1, 0.2)
    assert (decoder.self_attn.dropout, decoder.self_attn_dropout.p, decoder.cross_attn.dropout.p,
            decoder.ffn.dropout.p) == (0.3, 0.3, 0.3, 0.4)


def test_focus_detr_is_a_registered_meta_architecture():
    from detectron2.modeling import META_ARCH_REGISTRY

    from focus_detr.modeling import FocusDETR

    assert META_ARCH_REGISTRY.get("FocusDETR") is FocusDETR


def test_bfloat16_autocast_computes_in_bfloat16_and_returns_float32_detections(tiny_model, parity_fixture):
    item = fixture_inputs(parity_fixture)[:1]
    linear_dtypes = set()
    hooks = [
        module.register_forward_hook(lambda module, inputs, output: linear_dtypes.add(output.dtype))
        for module in tiny_model.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny_model.forward_inference(item, return_token_selection=True)[0]
    finally:
        for hook in hooks:
            hook.remove()
    full = tiny_model.forward_inference(item, return_token_selection=True)[0]
    # the dense layers ran in bfloat16, the heads (scores, boxes) in float32
    assert linear_dtypes == {torch.bfloat16, torch.float32}
    instances = low["instances"]
    assert instances.scores.dtype == torch.float32 and instances.pred_boxes.tensor.dtype == torch.float32
    assert torch.all(instances.scores[:-1] >= instances.scores[1:])
    # close to float32 where no ranking decision intervenes yet: the foreground scores of every token
    low_logits, full_logits = low["token_selection"]["foreground_logits"], full["token_selection"]["foreground_logits"]
    assert low_logits.dtype == torch.float32
    deviation = (low_logits - full_logits).abs().max().item()
    assert 0 < deviation < 0.05 * full_logits.abs().max().item()


def test_a_training_step_gives_the_same_gradients_every_time_on_a_multithreaded_cpu():
    """A resumed run can only repeat the run it resumes if a step's gradients do not depend on thread timing: on
    several CPU threads, an indexing backward that adds atomically made the level embeddings' gradient differ from
    run to run by up to ~1e-3."""
    from focus_detr.analysis.inputs import synthetic_training_batch

    torch.set_num_threads(2)  # restored by conftest
    torch.manual_seed(0)
    model = build_tiny_model().train()
    batch = synthetic_training_batch(256, 320, 2, 3, model.num_classes)
    gradients = []
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the denoising queries' draws
        sum(model(batch).values()).backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    differing = [name for name in gradients[0] if not all(torch.equal(gradients[0][name], g[name]) for g in gradients)]
    assert not differing, f"gradients differ between identical steps: {differing}"


@pytest.mark.parametrize("override, width", [
    ("model.position_embedding.num_pos_feats", 64),  # 128 channels in a 256-wide model: a shape error at the forward
    ("model.transformer.encoder.embed_dim", 128),
])
def test_parts_built_for_other_token_widths_are_named_at_build(override, width):
    with pytest.raises(ValueError, match=r"FocusDETR: the parts are built for tokens of other widths \(.*"
                                         r"\); give them all one width"):
        build_tiny_model(**{override: width})


@pytest.mark.parametrize("overrides, message", [
    # the backbone's res4 / res5 and two extra levels: strides 16..128, while the foreground targets assume 8..64
    ({"model.neck.in_features": ["res4", "res5"]},
     r"model.criterion.foreground_assigner.strides \[8, 16, 32, 64\] are not the strides of the feature levels, "
     r"\[16, 32, 64, 128\]"),
    ({"model.backbone.out_features": ["res4", "res5"]},
     r"model.neck.in_features reads 'res3', which the backbone does not output"),
    ({"model.neck.out_channels": 64}, r"model.neck.out_channels 64"),
    ({"model.neck.input_shapes.res3.channels": 7},
     r"model.neck.input_shapes\['res3'\] has 7 channels, the backbone's 'res3' output has 48"),
    ({"model.transformer.encoder.num_levels": 3},
     r"other numbers of feature levels \(.*model.transformer.encoder.num_levels 3"),
    ({"model.neck.num_outs": 3}, r"other numbers of feature levels \(model.neck.num_outs 3"),
    ({"model.transformer.num_levels": 3},
     r"foreground_selector.num_levels is 4 and num_levels 3 \(model.transformer.foreground_selector.num_levels and "
     r"model.transformer.num_levels in the configs\)"),
])
def test_parts_built_for_other_feature_levels_are_named_at_build(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_model(**overrides)


@pytest.mark.parametrize("override", ["model.denoising.num_classes", "model.criterion.num_classes"])
def test_a_loss_or_denoising_built_for_other_classes_is_named_at_build(override):
    """The configs give both model.num_classes' value; an override of one alone drew the denoising's label noise from
    some of the classes only (a smaller count), or failed in the loss at the first step (a larger one)."""
    with pytest.raises(ValueError, match=rf"FocusDETR: the parts are built for other numbers of classes \("
                                         rf"model.num_classes \d+, .*{override} 2.*\); set model.num_classes alone"):
        build_tiny_model(**{override: 2})


def test_a_position_embedding_the_token_layout_would_not_call_is_refused():
    from focus_detr.layers.position_embedding import PositionEmbeddingSine

    class ZeroEmbedding(PositionEmbeddingSine):
        def forward(self, mask):
            return super().forward(mask) * 0

    from detectron2.config import LazyConfig, instantiate
    from conftest import TINY_CONFIG

    cfg = LazyConfig.load(str(TINY_CONFIG))
    cfg.model.position_embedding._target_ = ZeroEmbedding  # the configured module would never be called
    with pytest.raises(ValueError, match="model.position_embedding must be a .*PositionEmbeddingSine .*got "
                                         "ZeroEmbedding"):
        instantiate(cfg.model)


def test_more_detections_than_candidates_are_announced_at_build_and_when_assigned(caplog):
    # an assignment to a built model was capped without a word
    def announced():
        messages = [r.getMessage() for r in caplog.records if "but the model has only" in r.getMessage()]
        caplog.clear()
        return messages

    model = build_tiny_model(**{"model.num_detections": 100000})
    assert announced() == ["model.num_detections is 100000, but the model has only 4000 candidates (queries x "
                           "classes): it returns at most that many detections per image"]
    model.num_detections = 100
    assert announced() == []
    model.num_detections = 5000
    assert [message.split(",")[0] for message in announced()] == ["model.num_detections is 5000"]


def test_num_detections_is_checked_at_build_and_when_assigned(tiny_model, parity_fixture):
    for value in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"^FocusDETR: num_detections must be an integer >= 1, got {value!r}$"):
            build_tiny_model(**{"model.num_detections": value})
    for value in (0, -1, 2.5, None, True):
        with pytest.raises(ValueError, match=rf"^FocusDETR: num_detections must be an integer >= 1, got {value!r}$"):
            tiny_model.num_detections = value  # 0 returned no detection without a word
    item = fixture_inputs(parity_fixture)[0]
    saved = tiny_model.num_detections
    try:
        tiny_model.num_detections = 7
        assert len(tiny_model([item])[0]["instances"]) == 7
    finally:
        tiny_model.num_detections = saved


@pytest.mark.parametrize("size", [0.0, -1.0])
def test_an_empty_proposal_size_is_refused(size):
    # every two-stage proposal was an empty box: AP 0.000 without a word
    with pytest.raises(ValueError, match=f"proposal_base_size must be > 0 .*got {size}"):
        build_tiny_model(**{"model.transformer.proposal_base_size": size})


@pytest.mark.parametrize("override, value, message", [
    ("model.neck.kernel_size", 0, "ChannelMapper: kernel_size must be a positive odd number"),  # ZeroDivisionError
    ("model.neck.kernel_size", 2, "ChannelMapper: kernel_size must be a positive odd number"),
    ("model.transformer.encoder.feedforward_dim", 0,  # a constant block
     r"CascadeDualAttentionEncoder \(model.transformer.encoder\): FFN: feedforward_dim must be >= 1"),
    ("model.transformer.decoder.feedforward_dim", -1,
     r"DINODecoder \(model.transformer.decoder\): FFN: feedforward_dim must be >= 1"),
    ("model.transformer.encoder.num_heads", 3,  # said which attention, not which part
     r"CascadeDualAttentionEncoder \(model.transformer.encoder\): MultiheadAttention: embed_dim"),
    ("model.transformer.decoder.num_points", 0, r"DINODecoder \(model.transformer.decoder\): "
                                                r"MultiScaleDeformableAttention: num_points must be a positive integer, "
                                                r"got 0"),
    ("model.transformer.foreground_selector.modulation_init_range", -1.0,
     "ForegroundTokenSelector: modulation_init_range must be >= 0"),  # torch's "uniform_ expects from <= to"
    ("model.pixel_mean", [1.0, 2.0], "must have one value per channel of the 3-channel images"),
])
def test_part_settings_that_cannot_build_a_working_model_are_refused(override, value, message):
    overrides = {override: value}
    if override == "model.pixel_mean":
        overrides["model.pixel_std"] = [1.0, 1.0]  # a 2-channel normalisation: failed at the first image
    with pytest.raises(ValueError, match=message):
        build_tiny_model(**overrides)


def test_an_encoder_depth_without_its_keep_ratios_names_both_keys():
    # detrex used the first entries without a word; the message named neither config key
    with pytest.raises(ValueError, match=r"^FocusDETRTransformer: model.transformer.foreground_selector."
                                         r"cascade_keep_ratios has 2 entries but the encoder has 3 layers "
                                         r"\(model.transformer.encoder.num_layers\); give one keep ratio per encoder "
                                         r"layer$"):
        build_tiny_model(**{"model.transformer.encoder.num_layers": 3})


@pytest.mark.parametrize("override, value, message", [
    ("model.backbone.stem.out_channels", 8, "model.backbone.stem.out_channels is 8, but block 0 of the backbone's "
                                            "stage res2 takes 16 channels"),
    ("model.backbone.stages.0.in_channels", 24, "model.backbone.stem.out_channels is 16, but block 0 of the "
                                                "backbone's stage res2 takes 24 channels"),
])
def test_a_resnet_stem_and_stages_built_for_other_widths_are_named_at_build(override, value, message):
    # a shape error at the first forward ("expected input[1, 8, 16, 16] to have 16 channels"), naming no setting
    with pytest.raises(ValueError, match=rf"^FocusDETR: {message}: build model.backbone.stem and "
                                         r"model.backbone.stages for each other$"):
        build_tiny_model(**{override: value})



def test_inference_outputs_follow_the_callers_grad_mode(tiny_model, parity_fixture):
    # forward_inference ran under torch.no_grad() whatever the caller asked: no saliency map or adversarial input
    image = fixture_inputs(parity_fixture)[0]["image"].float().requires_grad_()
    for module in tiny_model.modules():  # the folded frozen-BN weights made anew under inference_mode, which must
        module.__dict__.pop("_folded_cache", None)  # not make them inference tensors the grad call cannot save
    with torch.inference_mode():
        expected = tiny_model([{"image": image}])[0]["instances"]
    assert not expected.scores.requires_grad
    instances = tiny_model([{"image": image}])[0]["instances"]
    (instances.scores[0] + instances.pred_boxes.tensor[0].sum()).backward()  # boxes: scaled and clipped in place
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert torch.allclose(instances.scores, expected.scores, atol=1e-5)
    assert torch.allclose(instances.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-3)


def test_a_fine_grained_token_count_assigned_to_a_built_model_is_used(tiny_model, parity_fixture):
    item = fixture_inputs(parity_fixture)[0]
    encoder = tiny_model.transformer.encoder
    try:
        encoder.num_fine_grained_tokens = 10
        with torch.no_grad():
            selection = tiny_model.forward_inference([item], return_token_selection=True)[0]["token_selection"]
    finally:
        encoder.num_fine_grained_tokens = 300
    assert [len(inds) for inds in selection["fine_grained_inds"]] == [10, 10]
