import pytest
import torch
from torch import nn

from conftest import fixture_targets
from focus_detr.layers.box_ops import box_cxcywh_to_xyxy, inverse_sigmoid
from focus_detr.modeling.denoising import ContrastiveDenoising, DenoisingQueries, split_denoising_outputs



def _targets(counts, generator):
    targets = []
    for n in counts:
        centre = torch.rand(n, 2, generator=generator) * 0.4 + 0.3
        size = torch.rand(n, 2, generator=generator) * 0.2 + 0.05
        labels = torch.randint(0, 10, (n,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], -1)})
    return targets


def _label_enc(num_classes=10, dim=8):
    torch.manual_seed(0)
    return nn.Embedding(num_classes, dim)


def test_without_noise_queries_are_the_ground_truth_in_the_documented_layout():
    generator = torch.Generator().manual_seed(0)
    targets = _targets([2, 3, 0], generator)
    label_enc = _label_enc()
    dn = ContrastiveDenoising(num_classes=10, dn_number=7, label_noise_ratio=0.0, box_noise_scale=0.0)
    queries = dn(targets, label_enc, num_queries=5)
    max_gt, groups = 3, (2 * 7) // (2 * 3)
    assert (queries.single_padding, queries.dn_num) == (2 * max_gt, groups)
    pad_size = 2 * max_gt * groups
    assert queries.query_label.shape == (3, pad_size, 8) and queries.query_bbox.shape == (3, pad_size, 4)
    assert queries.attn_mask.shape == (pad_size + 5, pad_size + 5) and queries.attn_mask.dtype == torch.bool
    for b, target in enumerate(targets):
        n = len(target["labels"])
        for block in range(2 * groups):
            used = slice(block * max_gt, block * max_gt + n)
            unused = slice(block * max_gt + n, (block + 1) * max_gt)
            torch.testing.assert_close(queries.query_label[b, used], label_enc(target["labels"]))
            torch.testing.assert_close(queries.query_bbox[b, used], inverse_sigmoid(target["boxes"]))
            assert (queries.query_label[b, unused] == 0).all() and (queries.query_bbox[b, unused] == 0).all()


def test_attention_mask_isolates_groups_and_hides_denoising_from_matching_queries():
    generator = torch.Generator().manual_seed(1)
    queries = ContrastiveDenoising(num_classes=10, dn_number=5)(
        _targets([2, 1], generator), _label_enc(), num_queries=4
    )
    group_size, groups = queries.single_padding, queries.dn_num
    pad_size = group_size * groups
    assert (group_size, groups) == (4, 2)
    mask = queries.attn_mask
    for row in range(pad_size + 4):
        for col in range(pad_size + 4):
            if row >= pad_size:  # a matching query sees only matching queries
                blocked = col < pad_size
            else:  # a dn query sees its own group and the matching queries
                blocked = col < pad_size and col // group_size != row // group_size
            assert bool(mask[row, col]) == blocked, (row, col)


def test_noise_magnitudes_positive_within_half_size_negative_between_half_and_full():
    # small central boxes: even the largest negative shift (one full box size) stays inside [0, 1], so no clamping
    targets = [
        {"labels": torch.zeros(4, dtype=torch.int64), "boxes": torch.tensor([[0.5, 0.45, 0.1, 0.12]]).repeat(4, 1)},
        {"labels": torch.zeros(4, dtype=torch.int64), "boxes": torch.tensor([[0.42, 0.55, 0.14, 0.06]]).repeat(4, 1)},
    ]
    torch.manual_seed(5)
    queries = ContrastiveDenoising(num_classes=10, dn_number=40, label_noise_ratio=0.0)(targets, _label_enc(), 3)
    boxes = torch.stack([t["boxes"] for t in targets])  # (B, 4, 4)
    corners = box_cxcywh_to_xyxy(boxes)
    half = boxes[..., 2:].repeat(1, 1, 2) / 2
    noised_cxcywh = queries.query_bbox.sigmoid()
    noised = box_cxcywh_to_xyxy(noised_cxcywh)
    checked_negatives = 0
    for block in range(2 * queries.dn_num):
        rows = slice(block * 4, block * 4 + 4)
        shift = (noised[:, rows] - corners).abs() / half
        if block % 2 == 0:
            assert (shift <= 1 + 1e-3).all()
        else:
            # a negative whose corners crossed has width/height <= 0, which inverse_sigmoid clamps: skip those
            valid = (noised_cxcywh[:, rows, 2:] > 2e-3).all(-1)
            assert ((shift >= 1 - 1e-3) & (shift <= 2 + 1e-3)).all(-1)[valid].all()
            checked_negatives += int(valid.sum())
    assert checked_negatives > 20


def test_label_noise_flips_about_a_quarter_of_the_labels():
    targets = [{"labels": torch.zeros(50, dtype=torch.int64), "boxes": torch.full((50, 4), 0.5)}]
    label_enc = nn.Embedding(1000, 2)
    with torch.no_grad():
        label_enc.weight.copy_(torch.arange(1000.0)[:, None].repeat(1, 2))  # embedding reveals the label
    torch.manual_seed(3)
    queries = ContrastiveDenoising(num_classes=1000, dn_number=1000, label_noise_ratio=0.5)(targets, label_enc, 2)
    labels = queries.query_label[0, :, 0]
    flipped = (labels != 0).float().mean().item()
    assert 0.2 < flipped < 0.3  # ratio 0.5 -> probability 0.25 (a redraw may land on the same class, rarely)


def test_group_count_and_none_cases():
    label_enc = _label_enc()
    generator = torch.Generator().manual_seed(4)
    assert ContrastiveDenoising(num_classes=10, dn_number=100)(_targets([3, 1], generator), label_enc, 9).dn_num == 33
    assert ContrastiveDenoising(num_classes=10, dn_number=2)(_targets([5], generator), label_enc, 9).dn_num == 1
    assert ContrastiveDenoising(num_classes=10, dn_number=0)(_targets([2], generator), label_enc, 9) is None
    assert ContrastiveDenoising(num_classes=10)(_targets([0, 0], generator), label_enc, 9) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"dn_number": -1}, "dn_number"),
        ({"label_noise_ratio": 1.5}, "label_noise_ratio"),
        ({"box_noise_scale": -0.1}, "box_noise_scale"),
        ({"box_noise_scale": float("inf")}, "box_noise_scale must be a finite number"),  # trained on, loss doubled
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveDenoising(**kwargs)


def test_split_denoising_outputs():
    queries = DenoisingQueries(
        query_label=torch.zeros(2, 6, 8),
        query_bbox=torch.zeros(2, 6, 4),
        attn_mask=torch.zeros(11, 11, dtype=torch.bool),
        single_padding=3,
        dn_num=2,
    )
    outputs_class, outputs_coord = torch.randn(3, 2, 11, 7), torch.rand(3, 2, 11, 4)
    match_class, match_coord, dn_outputs = split_denoising_outputs(outputs_class, outputs_coord, queries)
    assert torch.equal(match_class, outputs_class[:, :, 6:]) and torch.equal(match_coord, outputs_coord[:, :, 6:])
    assert torch.equal(dn_outputs["pred_logits"], outputs_class[2, :, :6])
    assert torch.equal(dn_outputs["pred_boxes"], outputs_coord[2, :, :6])
    assert len(dn_outputs["aux_outputs"]) == 2
    assert torch.equal(dn_outputs["aux_outputs"][1]["pred_logits"], outputs_class[1, :, :6])
    assert torch.equal(dn_outputs["aux_outputs"][0]["pred_boxes"], outputs_coord[0, :, :6])
    same_class, same_coord, nothing = split_denoising_outputs(outputs_class, outputs_coord, None)
    assert same_class is outputs_class and same_coord is outputs_coord and nothing is None
    with pytest.raises(ValueError, match="denoising queries"):
        split_denoising_outputs(outputs_class[:, :, :5], outputs_coord[:, :, :5], queries)


def test_reproduces_the_official_denoising_inputs_of_the_fixture(parity_fixture):
    fixture = parity_fixture
    recorded = fixture["train_losses"]["dn"]["dn_inputs"]
    targets = fixture_targets(fixture)
    label_enc = nn.Embedding(80, 256)
    with torch.no_grad():
        label_enc.weight.copy_(fixture["state_dict"]["label_enc.weight"])
    num_queries = recorded["attn_mask"].shape[0] - recorded["input_query_label"].shape[1]

    torch.manual_seed(42)
    queries = ContrastiveDenoising(num_classes=80, dn_number=6, label_noise_ratio=0.5, box_noise_scale=1.0)(
        targets, label_enc, num_queries
    )
    assert queries.single_padding == recorded["dn_meta"]["single_padding"]
    assert queries.dn_num == recorded["dn_meta"]["dn_num"]
    assert torch.equal(queries.attn_mask, recorded["attn_mask"])
    assert torch.equal(queries.query_label, recorded["input_query_label"])  # same labels drawn: bit-exact
    # same noise drawn; the final log may differ by 1 ulp between CPU instruction sets (AVX2 here vs the recording)
    torch.testing.assert_close(queries.query_bbox, recorded["input_query_bbox"], rtol=0, atol=1e-6)
