"""Weights files that would leave the model random are refused with one line: a file that fills none of the model's
weights (any use), and one without detector weights where a trained detector is needed (inference)."""
import pytest
import torch

from conftest import build_tiny_model
from focus_detr.checkpoint import FocusDETRCheckpointer
from focus_detr.engine.inference_weights import load_inference_weights


@pytest.fixture(scope="module")
def trained_state():
    return {key: value.clone() for key, value in build_tiny_model().state_dict().items()}


def _save(tmp_path, name, state):
    path = tmp_path / name
    torch.save({"model": state}, path)
    return str(path)


def _backbone_only(state):
    return {key: value for key, value in state.items() if key.startswith("backbone.")}


def test_backbone_only_weights_initialise_training_but_are_refused_for_inference(tmp_path, trained_state):
    path = _save(tmp_path, "backbone.pth", _backbone_only(trained_state))
    model = build_tiny_model()
    FocusDETRCheckpointer(model).load(path)  # training's train.init_checkpoint: the backbone, the rest stays random
    assert all(torch.equal(value, trained_state[key]) for key, value in model.state_dict().items()
               if key.startswith("backbone."))
    with pytest.raises(ValueError, match=rf"checkpoint {path} holds no Focus-DETR detector weights: none of its \d+ "
                                         r"keys \(backbone\..*\) starts with transformer\., class_embed\., bbox_embed\.; "
                                         r"inference needs a trained detector's checkpoint"):
        load_inference_weights(build_tiny_model(), None, path)


@pytest.mark.parametrize("require_detector", [False, True])
def test_a_file_that_fills_none_of_the_weights_is_refused(tmp_path, trained_state, require_detector):
    unrelated = _save(tmp_path, "unrelated.pth", {"encoder.layer.0.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=rf"checkpoint {unrelated} (fills none of the model's weights: its 1 keys "
                                         r"\(encoder.layer.0.weight\) name none of the model's \(backbone\.|holds no "
                                         r"Focus-DETR detector weights)"):
        FocusDETRCheckpointer(build_tiny_model(), require_detector=require_detector).load(unrelated)
    empty = _save(tmp_path, "empty.pth", {})
    with pytest.raises(ValueError, match=rf"^checkpoint {empty} holds no weights$"):
        FocusDETRCheckpointer(build_tiny_model(), require_detector=require_detector).load(empty)


def test_a_prefix_on_every_key_is_named(tmp_path, trained_state):
    path = _save(tmp_path, "wrapped.pth", {f"model.{key}": value for key, value in trained_state.items()})
    with pytest.raises(ValueError, match=r"holds no Focus-DETR detector weights: .* \(every key starts with 'model\.', "
                                         r"which the model's keys do not have\)"):
        FocusDETRCheckpointer(build_tiny_model(), require_detector=True).load(path)
    with pytest.raises(ValueError, match=r"fills none of the model's weights: .* \(every key starts with 'model\.'"):
        FocusDETRCheckpointer(build_tiny_model()).load(path)


def test_a_ddp_prefixed_detector_loads_and_must_fit(tmp_path, trained_state):
    prefixed = {f"module.{key}": value for key, value in trained_state.items()}
    model = build_tiny_model()
    FocusDETRCheckpointer(model, require_detector=True).load(_save(tmp_path, "ddp.pth", prefixed))
    assert all(torch.equal(value, trained_state[key]) for key, value in model.state_dict().items())
    del prefixed["module.transformer.level_embeds"]
    path = _save(tmp_path, "ddp_partial.pth", prefixed)
    with pytest.raises(ValueError, match=r"does not fit the model: 1 missing keys \(transformer.level_embeds\)"):
        FocusDETRCheckpointer(build_tiny_model()).load(path)


def test_a_detector_of_another_backbone_family_names_both(tmp_path, trained_state):
    # a Swin-T detector's checkpoint given to an R50 config (tensor names are all the difference shows)
    swin_like = {key.replace("backbone.res", "backbone.layers.").replace("backbone.stem.", "backbone.patch_embed."):
                 value for key, value in trained_state.items()}
    with pytest.raises(ValueError, match=r"its backbone is a Swin Transformer and the config builds a ResNet: use the "
                                         r"config of the checkpoint's model$"):
        FocusDETRCheckpointer(build_tiny_model()).load(_save(tmp_path, "swin.pth", swin_like))


def test_initial_weights_for_another_class_count_load_all_but_the_class_tensors(tmp_path, trained_state, caplog):
    # fine-tuning a detector on another set of classes was refused with no way around it ("9 shape mismatches")
    path = _save(tmp_path, "coco.pth", trained_state)
    torch.manual_seed(1)
    model = build_tiny_model(**{"model.num_classes": 3})
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    # not asked for (an evaluation): refused, saying so plainly rather than "9 shape mismatches (class_embed..."
    with pytest.raises(ValueError, match=r"^checkpoint .*coco.pth was trained for 80 classes and the model has 3 "
                                         r"classes \(model.num_classes\): use it with the config it was trained with "
                                         r"\(model.num_classes=80 and datasets of its classes\)"):
        FocusDETRCheckpointer(model).load(path)
    caplog.clear()
    with caplog.at_level("WARNING"):
        FocusDETRCheckpointer(model, other_class_count=True).load(path)
    class_keys = {key for key, value in initial.items() if value.shape != trained_state[key].shape}
    assert class_keys and all(key.startswith(("class_embed.", "label_enc.")) for key in class_keys)
    for key, value in model.state_dict().items():
        assert torch.equal(value, initial[key] if key in class_keys else trained_state[key]), key
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # one line; not detectron2's line per tensor as well
    assert warnings[0].startswith(f"checkpoint {path} was trained for 80 classes and the model has 3 classes: its "
                                  f"{len(class_keys)} class-dependent tensors (class_embed.0.bias, ")
    assert warnings[0].endswith("keep the model's initialisation, all its other weights are loaded (fine-tuning on "
                                "another set of classes)")


def test_a_checkpoint_of_another_class_count_names_the_classes_it_records(tmp_path, trained_state):
    # a training checkpoint records its classes (thing_classes): the count's line names them, the first ten
    path = tmp_path / "named.pth"
    torch.save({"model": trained_state, "thing_classes": [f"class{i}" for i in range(80)]}, path)
    shown = ", ".join(f"'class{i}'" for i in range(10))
    with pytest.raises(ValueError, match=rf"^checkpoint .*named.pth was trained for 80 classes \({shown}, \.\.\. "
                                         r"\(70 more\)\) and the model has 3 classes \(model.num_classes\): use it"):
        FocusDETRCheckpointer(build_tiny_model(**{"model.num_classes": 3})).load(str(path))


@pytest.mark.parametrize("num_classes, num_queries", [(3, 7), (7, 7)])
def test_another_class_count_does_not_excuse_other_mismatches(tmp_path, trained_state, num_classes, num_queries):
    # (7, 7): only the query embedding differs, in its first dimension, which equals the model's class count
    path = _save(tmp_path, "coco.pth", trained_state)
    model = build_tiny_model(**{"model.num_classes": num_classes, "model.transformer.num_queries": num_queries})
    with pytest.raises(ValueError, match=r"does not fit the model: .*shape mismatches"):
        FocusDETRCheckpointer(model, other_class_count=True).load(path)


def test_a_resumed_checkpoint_must_fit_whatever_the_initial_weights_may(tmp_path, trained_state):
    from focus_detr.engine.checkpoint import AtomicDetectionCheckpointer

    _save(tmp_path, "model_0000009.pth", trained_state)  # the run's own checkpoint, for 80 classes
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    checkpointer = AtomicDetectionCheckpointer(build_tiny_model(**{"model.num_classes": 3}), str(tmp_path),
                                               other_class_count=True)
    with pytest.raises(ValueError, match=r"was trained for 80 classes and the model has 3 classes"):
        checkpointer.resume_or_load("", resume=True)


def test_a_backbone_file_without_the_models_prefix_names_the_option_that_matches_it(tmp_path, trained_state):
    plain = {key[len("backbone."):]: value for key, value in _backbone_only(trained_state).items()}
    path = _save(tmp_path, "plain_backbone.pth", plain)
    with pytest.raises(ValueError, match=r"name none of the model's \(.*\) \(the model has them under 'backbone\.': "
                                         r"detectron2's matching heuristics load such a file, on the command line "
                                         rf"'train\.init_checkpoint=\"{path}\?matching_heuristics=True\"'\)$"):
        FocusDETRCheckpointer(build_tiny_model()).load(path)
    model = build_tiny_model()
    FocusDETRCheckpointer(model).load(f"{path}?matching_heuristics=True")  # what it says works
    assert all(torch.equal(model.state_dict()["backbone." + key], value) for key, value in plain.items())
    # a file of another size: the option would fill nothing (and be refused), so it is not offered
    resized = {key: torch.zeros(value.shape[0] + 1, *value.shape[1:]) for key, value in plain.items() if value.dim()}
    path = _save(tmp_path, "other_size.pth", resized)
    with pytest.raises(ValueError, match=r"\(the model has them under 'backbone\.', but none of them with the model's "
                                         r"shape: a file for another backbone, or another size of it\)$"):
        FocusDETRCheckpointer(build_tiny_model()).load(path)


def test_a_backbone_file_matched_by_heuristics_fills_the_backbone_only_and_must_fill_some(tmp_path, trained_state):
    # detectron2's heuristics match keys by the end of their names over the whole model: a Swin file's last "norm.*"
    # also named the neck's norms; and a file of another backbone size matched nothing, which it only warned of,
    # and training went on from random weights
    from focus_detr.checkpoint import CheckpointError

    plain = {key[len("backbone."):]: value for key, value in _backbone_only(trained_state).items()}
    model = build_tiny_model()
    neck_norm = next(key for key in model.state_dict() if key.startswith("neck.") and key.endswith("norm.weight"))
    stray = {**plain, "norm.weight": torch.full_like(model.state_dict()[neck_norm], 7.0)}
    path = _save(tmp_path, "stray_norm.pth", stray)
    before = {key: value.clone() for key, value in model.state_dict().items() if not key.startswith("backbone.")}
    FocusDETRCheckpointer(model).load(f"{path}?matching_heuristics=True")
    assert all(torch.equal(model.state_dict()["backbone." + key], value) for key, value in plain.items())
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())

    resized = {key: torch.zeros(value.shape[0] + 1, *value.shape[1:]) for key, value in plain.items() if value.dim()}
    path = _save(tmp_path, "other_size.pth", resized)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path}\?matching_heuristics=True fills none of the "
                                              r"model's weights: detectron2's matching heuristics match none of its "
                                              r"\d+ keys \(.*\) to a backbone weight of the same name ending and "
                                              r"shape"):
        FocusDETRCheckpointer(build_tiny_model()).load(f"{path}?matching_heuristics=True")


@pytest.mark.parametrize("pixel_std, warned", [(None, True), ([1.0, 1.0, 1.0], False)])
def test_caffe2_imagenet_weights_for_a_model_normalised_as_torchvision_is_named(tmp_path, caplog, pixel_std, warned):
    # detectron2's MSRA R-50.pkl (BGR, pixel_std 1) loaded into a torchvision-normalised model without a word
    import pickle

    model = build_tiny_model(**({} if pixel_std is None else {"model.pixel_std": pixel_std}))
    stem = model.state_dict()["backbone.stem.conv1.weight"]
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": torch.ones_like(stem).numpy()}}))
    caplog.clear()
    with caplog.at_level("WARNING"):
        FocusDETRCheckpointer(model).load(str(path))
    assert torch.equal(model.state_dict()["backbone.stem.conv1.weight"], torch.ones_like(stem))  # loaded all the same
    named = [r.getMessage() for r in caplog.records if "Caffe2's layout" in r.getMessage()]
    assert len(named) == int(warned)
    if warned:
        assert named[0].startswith(f"checkpoint {path} is in Caffe2's layout (detectron2's MSRA ImageNet weights), "
                                   "trained on BGR images with pixel_std 1, but the model normalises with pixel_std "
                                   "(58.395, 57.12, 57.375)")


def test_backbone_weights_that_leave_part_of_the_backbone_random_say_how_much(tmp_path, trained_state, caplog):
    # only detectron2's key lists, among the rest of the model's (random by design), showed a file cut short
    backbone = _backbone_only(trained_state)
    parameters = [name for name, _ in build_tiny_model().named_parameters() if name.startswith("backbone.")]
    cut = {key: value for key, value in backbone.items() if key != parameters[-1]}
    for state, named in ((backbone, False), (cut, True)):
        path = _save(tmp_path, f"backbone_{named}.pth", state)
        caplog.clear()
        with caplog.at_level("WARNING"):
            FocusDETRCheckpointer(build_tiny_model()).load(path)
        lines = [r.getMessage() for r in caplog.records if "of the backbone's" in r.getMessage()]
        expected = (f"checkpoint {path} fills {len(parameters) - 1} of the backbone's {len(parameters)} parameters: "
                    f"the other 1 ({parameters[-1]}) keep the model's initialisation")
        assert lines == ([expected] if named else [])


def test_the_swin_configs_take_microsofts_released_weights_file_as_it_is(tmp_path, caplog):
    # the configs said to convert the file to detectron2's keys, and nothing said how; its keys are detectron2's
    # SwinTransformer's without "backbone.", plus the classifier, the last norm and (newer files) attention masks
    import re

    from detectron2.config import LazyConfig, instantiate
    from torch import nn

    from conftest import REPO_ROOT

    cfg = LazyConfig.load(str(REPO_ROOT / "configs" / "focus_detr_swin_tiny_224_4scale_12ep.py"))
    assert cfg.train.init_checkpoint.endswith(".pth?matching_heuristics=True")
    small = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
    cfg.model.backbone.update(small)
    holder = nn.Module()
    holder.backbone = instantiate(cfg.model.backbone)
    released = {key[len("backbone."):] if key.startswith("backbone.") else key:
                torch.randn_like(value) if value.is_floating_point() else value
                for key, value in instantiate(cfg.model.backbone).state_dict().items()
                if not re.match(r"(backbone\.)?norm\d\.", key)}
    released.update({"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192), "head.bias": torch.zeros(1000),
                     "head.weight": torch.zeros(1000, 192), "layers.0.blocks.0.attn_mask": torch.zeros(64, 49, 49)})
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": released}, path)
    query = cfg.train.init_checkpoint[cfg.train.init_checkpoint.index("?"):]
    with caplog.at_level("INFO"):
        FocusDETRCheckpointer(holder).load(str(path) + query)
    # the detection-only output norms are named once, as expected; no warning of a backbone left partly random
    assert "The backbone's output norms (backbone.norm1.bias, backbone.norm1.weight" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "of the backbone's" in r.getMessage()]
    loaded = holder.backbone.state_dict()
    matched = [key for key in released if key in loaded]
    assert len(matched) == len(loaded) - 6  # all but the detection-only output norms norm1..3
    assert all(torch.equal(loaded[key], released[key]) for key in matched)
