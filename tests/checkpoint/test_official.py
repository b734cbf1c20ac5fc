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


def test_official_aliases_that_are_nan_alike_are_one_tensor(parity_fixture):
    # a diverged run's copies, NaN in both, were refused as "should share one tensor but hold different values"
    state = dict(parity_fixture["state_dict"])
    nan = torch.full_like(state["class_embed.0.weight"], float("nan"))
    for key in ("class_embed.0.weight", "transformer.decoder.class_embed.0.weight"):
        state[key] = nan.clone()
    assert torch.isnan(convert_official_state_dict(state)["class_embed.0.weight"]).all()
    state["transformer.decoder.class_embed.0.weight"][0, 0] = 1.0
    with pytest.raises(ValueError, match="should share one tensor but hold different values"):
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


def test_a_ddp_prefixed_official_checkpoint_loads(parity_fixture, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{key}": value for key, value in parity_fixture["state_dict"].items()}}, path)
    model = build_tiny_model()
    FocusDETRCheckpointer(model, require_detector=True).load(str(path))
    assert torch.equal(model.transformer.foreground_selector.modulation_weights,
                       parity_fixture["state_dict"]["transformer.alpha"])


@pytest.mark.parametrize("ema_enabled", [True, False])
def test_detrex_ema_weights_are_used_where_the_config_asks_for_them(parity_fixture, tmp_path, caplog, ema_enabled):
    from omegaconf import OmegaConf

    from focus_detr.engine.inference_weights import load_inference_weights

    trained = parity_fixture["state_dict"]
    # detrex keeps its average under "ema_state", in the official layout, from named_parameters(): each shared tensor
    # under the first of its names only (the last class head as transformer.encoder.enhance_MCSP.0.* alone)
    first_names = {}
    for key, value in trained.items():
        first_names.setdefault((value.data_ptr(), value.shape), key)
    ema = {key: trained[key] * 0.5 for key in first_names.values()}
    assert "class_embed.2.weight" not in ema and "transformer.decoder.class_embed.2.weight" not in ema
    path = tmp_path / "detrex_ema.pth"
    torch.save({"model": trained, "ema_state": ema}, path)
    model = build_tiny_model()
    cfg = OmegaConf.create({"train": {"model_ema": {"enabled": ema_enabled}}})
    weights = load_inference_weights(model, cfg, str(path))
    expected = trained["transformer.alpha"] * (0.5 if ema_enabled else 1.0)
    assert weights == ("ema" if ema_enabled else "trained")
    assert torch.equal(model.transformer.foreground_selector.modulation_weights, expected)
    for head in (0, 2):  # a decoder layer's, and the proposals' (enhance_MCSP)
        assert torch.equal(model.class_embed[head].weight,
                           trained[f"class_embed.{head}.weight"] * (0.5 if ema_enabled else 1.0))
    assert ("also holds the EMA weights" in caplog.text) is not ema_enabled


def test_resuming_from_a_detrex_training_checkpoint_is_refused_in_one_line(parity_fixture, tmp_path):
    from focus_detr.engine.checkpoint import AtomicDetectionCheckpointer

    class Trainer:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            raise AssertionError("detrex's trainer state reached ours")

    path = tmp_path / "model_0004999.pth"
    detrex_trainer = {"iteration": 4999, "optimizer": {"state": {}, "param_groups": []}, "hooks": {}}
    torch.save({"model": parity_fixture["state_dict"], "trainer": detrex_trainer, "iteration": 4999}, path)
    (tmp_path / "last_checkpoint").write_text(path.name)
    checkpointer = AtomicDetectionCheckpointer(build_tiny_model(), str(tmp_path), trainer=Trainer())
    with pytest.raises(ValueError, match=(
            rf"^cannot resume from {path}: it is a detrex \(official Focus-DETR\) checkpoint, whose optimizer and "
            rf"schedule state do not fit this project's trainer; start a new run from its weights with "
            rf"train.init_checkpoint={path} in another train.output_dir \(without --resume\)$")):
        checkpointer.resume_or_load("", resume=True)
    # its weights start a new run
    assert checkpointer.resume_or_load(str(path), resume=False) == {"trainer": detrex_trainer, "iteration": 4999}


def test_detectron2s_checkpointer_and_load_state_dict_load_an_official_checkpoint_whole(parity_fixture, tmp_path):
    # detectron2's DetectionCheckpointer (detrex's loader) left most of the transformer at its random weights, with
    # only a log line of missing keys; a plain load_state_dict raised on the official names
    from detectron2.checkpoint import DetectionCheckpointer

    official = dict(parity_fixture["state_dict"])
    official_keys = list(official)
    reference = build_tiny_model()
    FocusDETRCheckpointer(reference).load_model_state(dict(official))
    path = tmp_path / "official.pth"
    torch.save({"model": official}, path)
    model = build_tiny_model()
    DetectionCheckpointer(model).load(str(path))
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in model.state_dict().items())
    plain = build_tiny_model()
    plain.load_state_dict(official)  # strict: every key of the model filled, no key left over
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in plain.state_dict().items())
    assert list(official) == official_keys  # the caller's dict is left as it was


def test_detectron2s_checkpointer_fine_tunes_an_official_checkpoint_to_another_class_count(parity_fixture, tmp_path):
    # fvcore dropped the mismatched class_embed.* and the pre-hook rebuilt them from their aliases
    # (transformer.decoder.class_embed.*, enhance_MCSP*) with the checkpoint's class count: the load raised
    from detectron2.checkpoint import DetectionCheckpointer

    official = parity_fixture["state_dict"]
    path = tmp_path / "official.pth"
    torch.save({"model": official}, path)
    reference = build_tiny_model()
    FocusDETRCheckpointer(reference).load_model_state(dict(official))
    torch.manual_seed(0)
    model = build_tiny_model(**{"model.num_classes": 5})
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    DetectionCheckpointer(model).load(str(path))
    for key, value in model.state_dict().items():
        expected = initial[key] if key.startswith(("class_embed.", "label_enc.")) else reference.state_dict()[key]
        assert torch.equal(value, expected), key
