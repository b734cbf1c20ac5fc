import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focus_detr.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from focus_detr.modeling.criterion import FocusDETRCriterion, loss_keys
from focus_detr.modeling.denoising import ContrastiveDenoising, split_denoising_outputs
from focus_detr.modeling.foreground_targets import ForegroundTargetAssigner, foreground_focal_loss

NUM_CLASSES, NUM_QUERIES, NUM_LAYERS = 6, 12, 3
IMAGE_SIZE = (96, 128)
SPATIAL_SHAPES = torch.tensor([[12, 16], [6, 8], [3, 4], [2, 2]])
NUM_TOKENS = int((SPATIAL_SHAPES[:, 0] * SPATIAL_SHAPES[:, 1]).sum())


def _boxes(n, generator):
    centre = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
    return torch.cat([centre, size], -1)


def _targets(counts, generator):
    return [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator),
            "boxes": _boxes(n, generator),
            "image_size": IMAGE_SIZE,
        }
        for n in counts
    ]


def _prediction(batch, num_queries, generator, requires_grad=False):
    logits = torch.randn(batch, num_queries, NUM_CLASSES, generator=generator).requires_grad_(requires_grad)
    boxes_unact = torch.randn(batch, num_queries, 4, generator=generator).requires_grad_(requires_grad)
    return {"pred_logits": logits, "pred_boxes": boxes_unact.sigmoid()}, [logits, boxes_unact]


def _outputs(batch, generator, requires_grad=False):
    leaves = []
    final, new = _prediction(batch, NUM_QUERIES, generator, requires_grad)
    leaves += new
    aux = []
    for _ in range(NUM_LAYERS - 1):
        prediction, new = _prediction(batch, NUM_QUERIES, generator, requires_grad)
        aux.append(prediction)
        leaves += new
    enc, new = _prediction(batch, NUM_QUERIES, generator, requires_grad)
    leaves += new
    foreground = torch.randn(batch, NUM_TOKENS, 1, generator=generator).requires_grad_(requires_grad)
    leaves.append(foreground)
    outputs = dict(final, aux_outputs=aux, enc_outputs=enc, foreground_logits=foreground, spatial_shapes=SPATIAL_SHAPES)
    return outputs, leaves


def _denoising(targets, generator, batch):
    torch.manual_seed(0)
    queries = ContrastiveDenoising(num_classes=NUM_CLASSES, dn_number=4)(
        targets, nn.Embedding(NUM_CLASSES, 8), NUM_QUERIES
    )
    pad = queries.num_denoising_queries
    all_class = torch.randn(NUM_LAYERS, batch, pad + NUM_QUERIES, NUM_CLASSES, generator=generator)
    all_coord = torch.rand(NUM_LAYERS, batch, pad + NUM_QUERIES, 4, generator=generator) * 0.4 + 0.3
    _, _, dn_outputs = split_denoising_outputs(all_class, all_coord, queries)
    return queries, dn_outputs


def _expected_keys(num_aux):
    suffixes = ["", "_enc", "_dn"] + [f"_{i}" for i in range(num_aux)] + [f"_dn_{i}" for i in range(num_aux)]
    return {f"loss_{name}{suffix}" for name in ("class", "bbox", "giou") for suffix in suffixes} | {"select_loss"}


def test_loss_keys_are_the_official_ones_and_stable_without_denoising():
    generator = torch.Generator().manual_seed(0)
    targets = _targets([3, 2], generator)
    outputs, _ = _outputs(2, generator)
    criterion = FocusDETRCriterion(num_classes=NUM_CLASSES)
    queries, dn_outputs = _denoising(targets, generator, 2)
    with_dn = criterion(outputs, targets, queries, dn_outputs)
    without_dn = criterion(outputs, targets)
    assert set(with_dn) == set(without_dn) == _expected_keys(NUM_LAYERS - 1)
    assert len(with_dn) == 3 * (1 + 2 * NUM_LAYERS) + 1
    for key, value in without_dn.items():
        assert value.dim() == 0 and torch.isfinite(value)
        if "_dn" in key:
            assert value.item() == 0.0
        else:  # matching-query losses do not depend on the denoising queries
            assert value.item() == with_dn[key].item()
    assert all(with_dn[key].item() > 0 for key in with_dn)


def _reference_set_losses(prediction, targets, indices, num_boxes):
    """Spec 7.2 written out: focal over all (query, class) entries / num_boxes; L1 and 1 - GIoU over matches."""
    logits, boxes = prediction["pred_logits"].detach(), prediction["pred_boxes"].detach()
    onehot = torch.zeros_like(logits)
    l1, giou = 0.0, 0.0
    for b, (query_idx, target_idx) in enumerate(indices):
        for q, t in zip(query_idx.tolist(), target_idx.tolist()):
            onehot[b, q, targets[b]["labels"][t]] = 1.0
            pred, gt = boxes[b, q], targets[b]["boxes"][t]
            l1 += float((pred - gt).abs().sum())
            giou += 1 - float(generalized_box_iou(box_cxcywh_to_xyxy(pred[None]), box_cxcywh_to_xyxy(gt[None]))[0, 0])
    p = logits.sigmoid()
    pt = p * onehot + (1 - p) * (1 - onehot)
    focal = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none") * (1 - pt) ** 2
    focal = focal * (0.25 * onehot + 0.75 * (1 - onehot))
    return {"loss_class": float(focal.sum()) / num_boxes, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}


def test_values_follow_the_spec_with_weights_and_normalisers():
    generator = torch.Generator().manual_seed(1)
    targets = _targets([3, 0, 2], generator)
    outputs, _ = _outputs(3, generator)
    queries, dn_outputs = _denoising(targets, generator, 3)
    weights = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    criterion = FocusDETRCriterion(num_classes=NUM_CLASSES)
    losses = criterion(outputs, targets, queries, dn_outputs)
    num_boxes = 5.0

    sets = {"": outputs, "_enc": outputs["enc_outputs"], **{f"_{i}": a for i, a in enumerate(outputs["aux_outputs"])}}
    for suffix, prediction in sets.items():
        indices = criterion.matcher(prediction["pred_logits"], prediction["pred_boxes"], targets)
        expected = _reference_set_losses(prediction, targets, indices, num_boxes)
        for name, value in expected.items():
            assert losses[name + suffix].item() == pytest.approx(value * weights[name], rel=1e-5)

    # denoising: fixed matching GT j <-> slot g * single_padding + j, normaliser num_boxes * dn_num
    dn_indices = []
    for target in targets:
        n = len(target["labels"])
        query_idx = [g * queries.single_padding + j for g in range(queries.dn_num) for j in range(n)]
        dn_indices.append((torch.tensor(query_idx, dtype=torch.int64), torch.arange(n).repeat(queries.dn_num)))
    dn_sets = {"_dn": dn_outputs, **{f"_dn_{i}": a for i, a in enumerate(dn_outputs["aux_outputs"])}}
    for suffix, prediction in dn_sets.items():
        expected = _reference_set_losses(prediction, targets, dn_indices, num_boxes * queries.dn_num)
        for name, value in expected.items():
            assert losses[name + suffix].item() == pytest.approx(value * weights[name], rel=1e-5)

    foreground = ForegroundTargetAssigner()(SPATIAL_SHAPES, targets)
    assert losses["select_loss"].item() == pytest.approx(
        1.5 * foreground_focal_loss(outputs["foreground_logits"], foreground).item(), rel=1e-6
    )


def test_constructor_weights_scale_their_terms():
    generator = torch.Generator().manual_seed(2)
    targets = _targets([2, 1], generator)
    outputs, _ = _outputs(2, generator)
    queries, dn_outputs = _denoising(targets, generator, 2)
    unit = FocusDETRCriterion(
        num_classes=NUM_CLASSES, class_weight=1, bbox_weight=1, giou_weight=1, foreground_loss_weight=1
    )
    scaled = FocusDETRCriterion(
        num_classes=NUM_CLASSES, class_weight=3, bbox_weight=7, giou_weight=11, foreground_loss_weight=0.5
    )
    base, weighted = unit(outputs, targets, queries, dn_outputs), scaled(outputs, targets, queries, dn_outputs)
    factor = {"loss_class": 3, "loss_bbox": 7, "loss_giou": 11, "select_loss": 0.5}
    for key, value in base.items():
        name = next(n for n in factor if key.startswith(n))
        assert weighted[key].item() == pytest.approx(value.item() * factor[name], rel=1e-6)


def test_weight_dict_sets_the_weight_of_single_keys_only():
    generator = torch.Generator().manual_seed(2)
    targets = _targets([2, 1], generator)
    outputs, _ = _outputs(2, generator)
    queries, dn_outputs = _denoising(targets, generator, 2)
    base = FocusDETRCriterion(num_classes=NUM_CLASSES)(outputs, targets, queries, dn_outputs)
    weight_dict = {"loss_bbox_dn": 2.0, "loss_class_enc": 0.0, "loss_giou_1": 7.0, "select_loss": 0.5}
    weighted = FocusDETRCriterion(num_classes=NUM_CLASSES, weight_dict=weight_dict)(
        outputs, targets, queries, dn_outputs
    )
    default_weights = {"loss_bbox_dn": 5.0, "loss_class_enc": 1.0, "loss_giou_1": 2.0, "select_loss": 1.5}
    assert set(weighted) == set(base)
    for key, value in base.items():
        factor = weight_dict[key] / default_weights[key] if key in weight_dict else 1.0
        assert weighted[key].item() == pytest.approx(value.item() * factor, rel=1e-6), key
    assert weighted["loss_class_enc"].item() == 0.0


def test_weight_dict_keys_are_checked_against_the_losses_the_model_produces():
    assert len(loss_keys(6)) == 3 * 13 + 1 and len(loss_keys(6, aux_loss=False)) == 3 * 3 + 1
    FocusDETRCriterion(weight_dict={"loss_giou_dn_4": 1.0}).check_weight_dict(6, aux_loss=True)
    with pytest.raises(ValueError, match="keys the model does not produce: 'loss_bbox_dnn'"):
        FocusDETRCriterion(weight_dict={"loss_bbox_dnn": 1.0}).check_weight_dict(6, aux_loss=True)
    with pytest.raises(ValueError, match="'loss_giou_dn_5'.*_dn_0 .. _dn_4"):
        FocusDETRCriterion(weight_dict={"loss_giou_dn_5": 1.0}).check_weight_dict(6, aux_loss=True)
    with pytest.raises(ValueError, match="model.aux_loss is False"):
        FocusDETRCriterion(weight_dict={"loss_bbox_0": 1.0}).check_weight_dict(6, aux_loss=False)
    with pytest.raises(ValueError, match="no such loss is computed: drop them"):  # detrex's config lists them
        FocusDETRCriterion(weight_dict={"loss_class_dn_enc": 1.0}).check_weight_dict(6, aux_loss=True)
    everything_zero = dict.fromkeys(loss_keys(2), 0.0)
    with pytest.raises(ValueError, match="every loss has weight 0"):
        FocusDETRCriterion(weight_dict=everything_zero).check_weight_dict(2, aux_loss=True)
    # the base weights all 0, one key weighted: that key trains
    FocusDETRCriterion(class_weight=0, bbox_weight=0, giou_weight=0, foreground_loss_weight=0,
                       weight_dict={"loss_bbox": 1.0}).check_weight_dict(2, aux_loss=True)
    for bad in ({"loss_bbox": -1.0}, {"loss_bbox": float("nan")}, {"loss_bbox": float("inf")}, {"loss_bbox": "2"},
                {"loss_bbox": True}, {3: 1.0}):
        with pytest.raises(ValueError, match="weight_dict maps loss keys to finite weights >= 0"):
            FocusDETRCriterion(weight_dict=bad)


def test_perfect_boxes_give_zero_box_losses():
    generator = torch.Generator().manual_seed(3)
    targets = _targets([3, 2], generator)
    outputs, _ = _outputs(2, generator)
    logits = torch.full((2, NUM_QUERIES, NUM_CLASSES), -8.0)
    boxes = outputs["pred_boxes"].clone()
    for b, target in enumerate(targets):
        n = len(target["labels"])
        boxes[b, 4 : 4 + n] = target["boxes"]
        logits[b, torch.arange(4, 4 + n), target["labels"]] = 8.0
    outputs.update(pred_logits=logits, pred_boxes=boxes)
    losses = FocusDETRCriterion(num_classes=NUM_CLASSES)(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert 0 <= losses["loss_giou"].item() < 1e-3  # not exactly 0: GIoU divides by (union + 1e-6)
    assert losses["loss_class"].item() < 1e-3
    assert losses["loss_bbox_0"].item() > 0.1  # aux layers are matched on their own, imperfect predictions


def test_batches_without_any_box_train_without_crashing():
    generator = torch.Generator().manual_seed(4)
    targets = _targets([0, 0], generator)
    outputs, leaves = _outputs(2, generator, requires_grad=True)
    queries = ContrastiveDenoising(num_classes=NUM_CLASSES)(targets, nn.Embedding(NUM_CLASSES, 8), NUM_QUERIES)
    assert queries is None
    losses = FocusDETRCriterion(num_classes=NUM_CLASSES)(outputs, targets, queries, None)
    assert set(losses) == _expected_keys(NUM_LAYERS - 1)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_class"].item() > 0
    sum(losses.values()).backward()
    assert all(leaf.grad is None or torch.isfinite(leaf.grad).all() for leaf in leaves)
    assert leaves[0].grad is not None and leaves[-1].grad is not None


def test_gradients_reach_every_prediction_set():
    generator = torch.Generator().manual_seed(5)
    targets = _targets([2, 3], generator)
    outputs, leaves = _outputs(2, generator, requires_grad=True)
    sum(FocusDETRCriterion(num_classes=NUM_CLASSES)(outputs, targets).values()).backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"bbox_weight": -1.0}, "bbox_weight"),
        ({"focal_alpha": 2.0}, "focal_alpha"),
        ({"foreground_loss_weight": -0.1}, "foreground_loss_weight"),
        ({"foreground_focal_alpha": -0.5}, "foreground_focal_alpha"),
        # a total loss of 0 every step, status 0: nothing learnt
        ({"num_classes": 5, "class_weight": 0.0, "bbox_weight": 0.0, "giou_weight": 0.0, "foreground_loss_weight": 0.0},
         "are all 0: the loss would be 0"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocusDETRCriterion(**kwargs)


def test_inconsistent_inputs_are_rejected():
    generator = torch.Generator().manual_seed(6)
    targets = _targets([1, 1], generator)
    outputs, _ = _outputs(2, generator)
    queries, dn_outputs = _denoising(targets, generator, 2)
    criterion = FocusDETRCriterion(num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="together"):
        criterion(outputs, targets, queries, None)
    with pytest.raises(ValueError, match="targets for a batch"):
        criterion(outputs, targets[:1])
    with pytest.raises(ValueError, match="num_classes"):
        FocusDETRCriterion(num_classes=NUM_CLASSES + 1)(outputs, targets)
    with pytest.raises(ValueError, match="aux layers"):
        criterion(outputs, targets, queries, dict(dn_outputs, aux_outputs=dn_outputs["aux_outputs"][:1]))


def _to(value, device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_follow_the_device_of_their_inputs():
    generator = torch.Generator().manual_seed(7)
    targets = _targets([3, 1], generator)
    outputs, _ = _outputs(2, generator)
    criterion = FocusDETRCriterion(num_classes=NUM_CLASSES)
    cpu_losses = criterion(outputs, targets)
    cuda_targets = _to(targets, "cuda")
    cuda_losses = criterion(_to(outputs, "cuda"), cuda_targets)
    for key, value in cpu_losses.items():
        assert cuda_losses[key].device.type == "cuda"
        assert cuda_losses[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6)
    queries = ContrastiveDenoising(num_classes=NUM_CLASSES)(
        cuda_targets, nn.Embedding(NUM_CLASSES, 8).cuda(), NUM_QUERIES
    )
    for tensor in (queries.query_label, queries.query_bbox, queries.attn_mask):
        assert tensor.device.type == "cuda"


def test_prediction_sets_matched_together_get_each_sets_own_matching():
    """The criterion matches its sets in one matcher call per shape; each set must get what it gets alone."""
    generator = torch.Generator().manual_seed(4)
    targets = _targets([2, 0, 4], generator)
    sets = [_prediction(3, NUM_QUERIES, generator)[0] for _ in range(3)]
    sets.append(_prediction(3, NUM_QUERIES + 3, generator)[0])  # another query count: matched on its own
    criterion = FocusDETRCriterion(num_classes=NUM_CLASSES)
    together = criterion.match_sets(sets, targets)
    for prediction, indices in zip(sets, together):
        alone = criterion.matcher(prediction["pred_logits"], prediction["pred_boxes"], targets)
        assert len(indices) == len(alone) == 3
        for (query_idx, target_idx), (alone_query, alone_target) in zip(indices, alone):
            assert torch.equal(query_idx, alone_query) and torch.equal(target_idx, alone_target)
