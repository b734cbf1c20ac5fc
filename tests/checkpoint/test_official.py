import argparse

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from conftest import REPO_ROOT, build_tiny_model
from focus_detr.checkpoint import FocusDETRCheckpointer, convert_official_state_dict, is_official_layout



@pytest.fixture(scope="module")
def r50_model():
    cfg = LazyConfig.load(str(REPO_ROOT / "configs" / "focus_detr_r50_4scale_12ep.py"))
    return instantiate(cfg.model)


def test_r50_has_the_official_number_of_parameters(r50_model):
    assert sum(p.numel() for p in r50_model.parameters()) == 49_339_920
    assert sum(p.numel() for p in r50_model.parameters() if p.requires_grad) == 49_330_512


def test_every_official_r50_key_maps_onto_the_model(r50_model, official_r50_shapes):
    official = {k: torch.zeros(s) for k, s in official_r50_shapes.items()}
    assert is_official_layout(official)
    converted = convert_official_state_dict(official)
    ours = r50_model.state_dict()
    assert set(converted) == set(ours)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_official_aliases_are_folded_and_checked(parity_fixture):
    state = dict(parity_fixture["state_dict"])
    converted = convert_official_state_dict(state)
    assert torch.equal(converted["class_embed.2.weight"], state["transformer.encoder.enhance_MCSP.0.weight"])
    # Any subset of the aliases is enough ...
    only_aliases = {k: v for k, v in state.items() if not k.startswith(("class_embed.", "bbox_embed."))}
    assert torch.equal(convert_official_state_dict(only_aliases)["bbox_embed.1.layers.2.bias"], state["bbox_embed.1.layers.2.bias"])
    # ... but copies that should be one tensor must agree.
    state["enhance_MCSP_layerlist.1.bias"] = state["enhance_MCSP_layerlist.1.bias"] + 1
    with pytest.raises(ValueError, match="enhance_MCSP_layerlist.1.bias"):
        convert_official_state_dict(state)


def test_checkpointer_loads_official_files_and_refuses_partial_ones(parity_fixture, tmp_path):
    model = build_tiny_model()
    path = tmp_path / "official.pth"
    torch.save({"model": parity_fixture["state_dict"]}, path)
    FocusDETRCheckpointer(model).load(str(path))
    assert torch.equal(model.transformer.foreground_selector.modulation_weights, parity_fixture["state_dict"]["transformer.alpha"])

    broken = dict(parity_fixture["state_dict"])
    del broken["transformer.level_embeds"]
    broken["transformer.not_a_module.weight"] = torch.zeros(1)
    torch.save({"model": broken}, path)
    with pytest.raises(ValueError, match=r"official.pth does not fit the model: 1 missing keys \(transformer.level_embeds\), 1 unexpected"):
        FocusDETRCheckpointer(build_tiny_model()).load(str(path))
    FocusDETRCheckpointer(build_tiny_model(), allow_partial=True).load(str(path))


def test_checkpointer_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "trainer": argparse.Namespace(hook="arbitrary code could run here")}, path)
    with pytest.raises(ValueError, match=r"evil.pth: it refers to argparse.Namespace, which is not allowed"):
        FocusDETRCheckpointer(build_tiny_model()).load(str(path))
