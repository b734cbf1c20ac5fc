import pytest
import torch
from detectron2.structures import Boxes, Instances

from conftest import build_tiny_model


def _image_input(image, height=None, width=None, boxes=None, classes=None):
    item = {"image": image}
    if height is not None:
        item.update(height=height, width=width)
    if boxes is not None:
        item["instances"] = Instances(
            tuple(image.shape[-2:]), gt_boxes=Boxes(boxes.clone()), gt_classes=classes.clone()
        )
    return item


def _fixture_inputs(parity_fixture, with_instances=False):
    items = []
    for item in parity_fixture["inputs"]:
        inst = item["instances"]
        items.append(
            _image_input(
                item["image"], item["height"], item["width"],
                inst["gt_boxes"] if with_instances else None, inst["gt_classes"] if with_instances else None,
            )
        )
    return items


def test_inference_returns_instances_in_the_requested_size(tiny_model, parity_fixture):
    items = _fixture_inputs(parity_fixture)
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
    items = _fixture_inputs(parity_fixture)
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
    items = _fixture_inputs(parity_fixture)
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
    item = _fixture_inputs(parity_fixture)[0]
    selection = model.forward_inference([item], return_token_selection=True)[0]["token_selection"]
    assert [len(i) for i in selection["foreground_inds"]] == [299, 149]  # int(1192 * 0.25) + 1 = 299


def test_training_with_an_image_without_boxes_gives_finite_losses(parity_fixture):
    torch.manual_seed(0)
    model = build_tiny_model().train()
    items = _fixture_inputs(parity_fixture, with_instances=True)
    items[1]["instances"] = items[1]["instances"][:0]
    losses = model(items)
    assert all(torch.isfinite(v) for v in losses.values())
    empty = _fixture_inputs(parity_fixture, with_instances=True)
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
    model(_fixture_inputs(parity_fixture, with_instances=True))
    assert calls == ["backbone", "denoising"]


def test_a_few_training_steps_reduce_the_loss_on_cpu(parity_fixture):
    torch.manual_seed(0)
    model = build_tiny_model().train()
    items = _fixture_inputs(parity_fixture, with_instances=True)
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

    items = _fixture_inputs(parity_fixture, with_instances=True)
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
    sum(model(_fixture_inputs(parity_fixture, with_instances=True)).values()).backward()
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


def test_bad_inputs_are_rejected_with_a_clear_error(parity_fixture):
    model = build_tiny_model()
    with pytest.raises(ValueError, match="image"):
        model.eval()([{"image": torch.zeros(1, 32, 32)}])
    model.train()
    item = _fixture_inputs(parity_fixture, with_instances=True)[0]
    item["instances"].gt_boxes.tensor[0] = torch.tensor([50.0, 50.0, 10.0, 60.0])
    with pytest.raises(ValueError, match="gt boxes"):
        model([item])
    item = _fixture_inputs(parity_fixture, with_instances=True)[0]
    item["instances"].gt_classes[0] = 80
    with pytest.raises(ValueError, match="gt_classes"):
        model([item])
    with pytest.raises(ValueError, match="instances"):
        model(_fixture_inputs(parity_fixture))


@pytest.mark.parametrize("batched_inputs, message", [
    # each failed deep inside (max() of an empty sequence, 'str' object has no attribute 'get', ...)
    ([], r"batched_inputs must be a non-empty list of dicts, each with an 'image' \(3, H, W\) tensor \(detectron2's "
         r"model input\), got an empty list"),
    ({"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}, "batched_inputs must be a non-empty list .* got dict"),
    (torch.zeros(3, 32, 32, dtype=torch.uint8), "batched_inputs must be a non-empty list .* got Tensor"),
    ((item for item in [{"image": torch.zeros(3, 32, 32)}]), "got generator"),
    ([torch.zeros(3, 32, 32, dtype=torch.uint8)], r"batched_inputs\[0\] must be a dict with an 'image', got Tensor"),
    # 0..65535 pixels were normalised as 0..255 ones: other detections, no word
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.int16)}], r"\['image'\] has dtype torch.int16; pixels are uint8"),
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.bool)}], "has dtype torch.bool"),
    # rescaled to 0 x 0 (or a negative size): no detection left, silently
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "height": 0, "width": 40}],
     r"batched_inputs\[0\]\['height'\] must be a positive integer .* got 0"),
    ([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "height": 30, "width": 40.5}], r"\['width'\] .* got 40.5"),
])
def test_model_inputs_that_are_not_detectron2_s_are_one_line(tiny_model, batched_inputs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(batched_inputs)


def test_a_whole_float_or_a_tensor_size_is_taken_as_detectron2_takes_it(tiny_model):
    # a COCO json written with "height": 345.0 reaches the model as a float: every image was refused
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    as_ints = tiny_model([{"image": image, "height": 64, "width": 96}])[0]["instances"]
    for height, width in ((64.0, 96.0), (torch.tensor(64), torch.tensor([96]))):
        other = tiny_model([{"image": image, "height": height, "width": width}])[0]["instances"]
        assert other.image_size == (64, 96) and torch.equal(other.pred_boxes.tensor, as_ints.pred_boxes.tensor)
    with pytest.raises(ValueError, match=r"\['height'\] must be a positive integer .* got 64.5"):
        tiny_model([{"image": image, "height": torch.tensor(64.5), "width": 96}])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_weights_cast_to_another_precision_name_autocast(dtype):
    # model.half() / .to(torch.bfloat16) ended in "Input type (torch.FloatTensor) and weight type ... should be the
    # same"; .double() was not told how to undo it
    model = build_tiny_model().eval().to(dtype)
    # model.float() gives float32 weights, but rounded: the detections differ from the original weights'
    with pytest.raises(ValueError, match=rf"^FocusDETR runs with float32 weights, got {dtype}: load the weights "
                                         r"again \(model.float\(\) alone keeps their rounded values\); for bfloat16 "
                                         r"or float16 keep them float32 and autocast"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])


def test_a_model_in_training_mode_called_for_detections_names_eval():
    # instantiate(cfg.model) builds it in training mode, which then asked for ground truth only
    with pytest.raises(ValueError, match=r"^FocusDETR: training needs batched_inputs\[0\]\['instances'\] \(the model "
                                         r"is in training mode: model.eval\(\) for inference\)$"):
        build_tiny_model()([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])


def test_float_images_in_0_to_255_are_accepted_as_detectron2_allows(tiny_model, parity_fixture):
    item = _fixture_inputs(parity_fixture)[0]
    as_uint8 = tiny_model([item])[0]["instances"]
    as_float = tiny_model([dict(item, image=item["image"].float())])[0]["instances"]
    assert torch.equal(as_uint8.scores, as_float.scores)


def test_focus_detr_is_a_registered_meta_architecture():
    from detectron2.modeling import META_ARCH_REGISTRY

    from focus_detr.modeling import FocusDETR

    assert META_ARCH_REGISTRY.get("FocusDETR") is FocusDETR


def test_float_images_in_0_to_1_are_refused_in_one_line(tiny_model, parity_fixture):
    item = _fixture_inputs(parity_fixture)[0]
    with pytest.raises(ValueError, match=(
            r"^FocusDETR: batched_inputs\[0\]\['image'\] is a float image whose pixels all lie in 0\.\.1 \(brightest "
            r"0\.917647\); the model takes pixels in 0\.\.255: multiply by 255 \(torchvision's to_tensor scales to "
            r"0\.\.1\), or pass the uint8 image$")):
        tiny_model([dict(item, image=item["image"].float() / 255)])
    for dark in (0.0, 1.0):  # black, and a nearly black 0..255 image: whole values, read the same in either scale
        image = torch.full(item["image"].shape, dark)
        assert len(tiny_model([dict(item, image=image)])[0]["instances"]) > 0


@pytest.mark.parametrize("convert, message", [
    (lambda x: (x / 255 - 0.45) / 0.226, r"looks normalised already \(pixels -0\.95\d*\.\.2\.06\d*\); the model "
                                          r"takes pixels in 0\.\.255 and normalises them itself"),
    (lambda x: x - 128, r"has pixels -68\.\.106; the model takes pixels in 0\.\.255"),
    (lambda x: x * 257, r"has pixels 15420\.\.60138; the model takes pixels in 0\.\.255: scale the image to 0\.\.255 "
                        r"first \(a 16-bit image: divide by 257\)$"),
    (lambda x: torch.where(x == x.max(), float("nan"), x), r"has pixels that are not finite"),
    (lambda x: torch.where(x == x.max(), float("inf"), x), r"has pixels that are not finite"),
], ids=["normalised", "centred", "16-bit", "nan", "inf"])
def test_float_images_outside_0_to_255_are_refused_in_one_line(tiny_model, parity_fixture, convert, message):
    item = _fixture_inputs(parity_fixture)[0]
    with pytest.raises(ValueError, match=r"^FocusDETR: batched_inputs\[0\]\['image'\] " + message):
        tiny_model([dict(item, image=convert(item["image"].float()))])


def test_float_images_resampled_past_0_to_255_are_accepted(tiny_model, parity_fixture):
    item = _fixture_inputs(parity_fixture)[0]
    image = item["image"].float()
    image[:, 0, 0], image[:, 0, 1] = -20.0, 280.0  # what a bicubic resize of a 0..255 image overshoots near edges
    assert len(tiny_model([dict(item, image=image)])[0]["instances"]) > 0


def test_bfloat16_autocast_computes_in_bfloat16_and_returns_float32_detections(tiny_model, parity_fixture):
    item = _fixture_inputs(parity_fixture)[:1]
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


def test_more_detections_than_candidates_are_announced(caplog):
    build_tiny_model(**{"model.num_detections": 100000})
    assert any("model.num_detections is 100000, but the model has only" in r.getMessage() for r in caplog.records)


def test_num_detections_is_checked_at_build_and_when_assigned(tiny_model, parity_fixture):
    for value in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"^FocusDETR: num_detections must be an integer >= 1, got {value!r}$"):
            build_tiny_model(**{"model.num_detections": value})
    for value in (0, -1, 2.5, None, True):
        with pytest.raises(ValueError, match=rf"^FocusDETR: num_detections must be an integer >= 1, got {value!r}$"):
            tiny_model.num_detections = value  # 0 returned no detection without a word
    item = _fixture_inputs(parity_fixture)[0]
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
