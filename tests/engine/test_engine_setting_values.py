"""Setting values that trained or evaluated the wrong thing without a word, or failed with a traceback or only after
training: each is one line, before the first step (and before the folder's config.yaml is rewritten)."""
import pathlib

import pytest
import torch

from cli_output import error_lines, logged_warnings, shows_traceback
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)

TREE_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "focus_detr_r18_trees.py"

CASES = {
    # gradient ascent: lr -4e-07, then -0.0004, status 0
    "negative lr multiplier": (["lr_multiplier.scheduler.values=[-1.0,0.1]"],
                               "error: lr_multiplier gives the learning rate a multiplier of -1 at 0% of train.max_iter"),
    "negative warm-up factor": (["lr_multiplier.warmup_length=0.2", "lr_multiplier.warmup_factor=-1.0"],
                                "error: lr_multiplier gives the learning rate a multiplier of -1 at 0% of "
                                "train.max_iter"),
    # fvcore's "where in ParamScheduler must be in [0, 1]"; a negative length switched the warm-up off
    "warm-up longer than the run": (["lr_multiplier.warmup_length=2.0"],
                                    "error: lr_multiplier.warmup_length is the warm-up's share of train.max_iter, in "
                                    "[0, 1), got 2.0 (e.g. 1000 iterations of "),
    "negative warm-up": (["lr_multiplier.warmup_length=-1"],
                         "error: lr_multiplier.warmup_length is the warm-up's share of train.max_iter, in [0, 1), got "
                         "-1"),
    # exit 0 with the initial weights evaluated as the trained ones
    "learning rate 0": (["optimizer.lr=0"], "error: optimizer.lr is 0: the training would change no weight (to "
                        "evaluate the initial weights, use --eval-only)"),
    # an omegaconf IndexError traceback from torch's Adam; a third value dropped without a word
    "one Adam beta": (["optimizer.betas=[0.9]"], "error: optimizer.betas must be two numbers (the averaging rates of "
                      "the gradient and of its square, e.g. [0.9,0.999]), got [0.9]"),
    "no Adam beta": (["optimizer.betas=[]"], "error: optimizer.betas must be two numbers"),
    "three Adam betas": (["optimizer.betas=[0.9,0.999,0.5]"], "error: optimizer.betas must be two numbers"),
    # every weight NaN after the first step, or "training diverged" naming no setting
    "infinite learning rate": (["optimizer.lr=inf"], "error: optimizer.lr must be a finite number, got inf"),
    "infinite learning-rate factor": (["optimizer.params.lr_factor_func.factor=inf"],
                                      "error: optimizer.params.lr_factor_func: factor must be a finite number >= 0, "
                                      "got inf"),
    # torch checks optimizer.weight_decay, not the parameter groups': the normalisation weights grew
    "negative decay of the norms": (["optimizer.params.weight_decay_norm=-1"],
                                    "error: optimizer.params.weight_decay_norm must be a finite number >= 0 (0: no "
                                    "weight decay), got -1"),
    # as the learning rate 0: exit 0, the initial weights saved as trained ones
    "lr multiplier 0 throughout": (["lr_multiplier.scheduler.values=[0.0,0.0]"],
                                   "error: lr_multiplier gives the learning rate a multiplier of 0 throughout "
                                   "train.max_iter: the training would change no weight (to evaluate the initial "
                                   "weights, use --eval-only)"),
    # the whole run written into a folder named None
    "a path set to None": (["train.output_dir=None"], "error: train.output_dir=None sets the text 'None', not "
                           "nothing: write train.output_dir=null for no value"),
    "schedule values of the wrong count": (["lr_multiplier.scheduler.values=[1.0]"],
                                           "error: the config's lr_multiplier cannot be built: "),
    # a negative type made the norm 0 (clipping off), 0 counted entries
    "clip norm 0": (["train.clip_grad.enabled=True", "train.clip_grad.params.max_norm=0"],
                    "error: train.clip_grad.params.max_norm must be positive (train.clip_grad.enabled=False: no "
                    "clipping), got 0"),
    "clip norm type 0": (["train.clip_grad.enabled=True", "train.clip_grad.params.norm_type=0"],
                         "error: train.clip_grad.params.norm_type must be positive"),
    "seed beyond numpy's": (["train.seed=99999999999999"], "error: train.seed must be an integer from 0 to 2**32 - 1, "
                            "or -1 for a random seed, got 99999999999999"),
    "seed negative": (["train.seed=-5"], "error: train.seed must be an integer from 0 to 2**32 - 1"),
    # "Overflow when unpacking long long" at iteration 0
    "data seed beyond torch's": (["dataloader.train.seed=99999999999999999999"],
                                 "error: dataloader.train.seed must be an integer from 0 to 2**32 - 1, or null for a "
                                 "seed drawn at the start, got 99999999999999999999"),
    "data seed negative": (["dataloader.train.seed=-1"], "error: dataloader.train.seed must be an integer from 0"),
    # AP 5.58 -> 0.32 on the tree model
    "train and test channel orders differ": (["dataloader.test.mapper.img_format=BGR"],
                                             "error: dataloader.train.mapper.img_format is RGB but "
                                             "dataloader.test.mapper.img_format is BGR"),
    "a format with one channel": (["dataloader.train.mapper.img_format=L"],
                                  "error: DetrDatasetMapper: img_format must be 'RGB' or 'BGR'"),
    # found only at the final evaluation, after all of training
    "test batch size 0": (["dataloader.test.batch_size=0"],
                          "error: the config's test loader (dataloader.test) cannot be built: "),
    # clipping and the weight average silently off, or a TypeError traceback
    "clipping switched by null": (["train.clip_grad.enabled=null"],
                                  "error: train.clip_grad.enabled must be True or False, got None"),
    "clipping without a norm": (["train.clip_grad.enabled=True", "train.clip_grad.params.max_norm=null"],
                                "error: train.clip_grad.params.max_norm must be a number, got None"),
    "average decay null": (["train.model_ema.decay=null"], "error: train.model_ema.decay must be a number, got None"),
    "checkpoint period null": (["train.checkpointer.period=null"],
                               "error: train.checkpointer.period must be a positive integer, got None"),
    # a typo in the name: the backbone trained at the full rate without a word
    "learning-rate factor matching nothing": (["optimizer.params.lr_factor_func.substring=Backbone"],
                                              "error: optimizer.params.lr_factor_func.substring 'Backbone' is in no "
                                              "parameter's name"),
    # the crops of the training pipeline applied to the test images at random (AP 5.58 -> 3.47 on the trees)
    "random crops at evaluation": (["dataloader.test.mapper.augmentation_with_crop=${dataloader.train.mapper."
                                    "augmentation_with_crop}"],
                                   "error: the config's test loader (dataloader.test) cannot be built: "
                                   "DetrDatasetMapper: augmentation_with_crop is for training only"),
    # detectron2's AssertionError tracebacks, naming no key (one with no message, one at the first crop)
    "resize of no sample style": (["dataloader.train.mapper.augmentation.1.sample_style=bogus"],
                                  "error: dataloader.train.mapper.augmentation.1 (ResizeShortestEdge) cannot be built: "
                                  "AssertionError: bogus (assert sample_style in [\"range\", \"choice\"], "
                                  "sample_style); check its settings (dataloader.train.mapper.augmentation.1.*)"),
    "resize range of three sizes": (["dataloader.train.mapper.augmentation.1.sample_style=range"],
                                    "error: dataloader.train.mapper.augmentation.1 (ResizeShortestEdge) cannot be "
                                    "built: AssertionError: short_edge_length must be two values using 'range' sample "
                                    "style. Got [40, 48, 56]!"),
    "crop of no type": (["dataloader.train.mapper.augmentation_with_crop.1.crop_type=bogus"],
                        "error: dataloader.train.mapper.augmentation_with_crop.1 (RandomCrop) cannot be built: "
                        "AssertionError (assert crop_type in [\"relative_range\", \"relative\", \"absolute\", "
                        "\"absolute_range\"]); check its settings"),
    "crop range largest first": (["dataloader.train.mapper.augmentation_with_crop.1.crop_size=[48,32]",
                                  "dataloader.train.mapper.crop_probability=1.0"],
                                 "error: dataloader.train.mapper.augmentation_with_crop.1.crop_size is the (smallest, "
                                 "largest) side of a crop of crop_type absolute_range, got [48, 32]: give [32, 48]"),
    "crop range of three sides": (["dataloader.train.mapper.augmentation_with_crop.1.crop_size=[32,48,64]"],
                                  "error: dataloader.train.mapper.augmentation_with_crop.1.crop_size is the (smallest, "
                                  "largest) side of a crop of crop_type absolute_range, two numbers, got [32, 48, 64]"),
    # every image flipped, without a word
    "flip probability above 1": (["dataloader.train.mapper.augmentation.0.prob=1.5"],
                                 "error: dataloader.train.mapper.augmentation.0.prob is the probability that "
                                 "RandomFlip applies, in [0, 1], got 1.5"),
    "test resize of no sample style": (["dataloader.test.mapper.augmentation.0.sample_style=bogus"],
                                       "error: dataloader.test.mapper.augmentation.0 (ResizeShortestEdge) cannot be "
                                       "built: AssertionError: bogus"),
    # an integer argument given None: a TypeError traceback where it is used
    "integer setting null": (["dataloader.test.batch_size=null"],
                             "error: config key dataloader.test.batch_size must be an integer, got None"),
    "training batch size null": (["dataloader.train.total_batch_size=null"],
                                 "error: config key dataloader.train.total_batch_size must be an integer, got None"),
    "crop probability null": (["dataloader.train.mapper.crop_probability=null"],
                              "error: config key dataloader.train.mapper.crop_probability must be a number, got None"),
    # detectron2's "AssertionError: []"
    "no training set": (["dataloader.train.dataset.names=[]"], "error: a dataset loader's names is empty"),
    # torch's and this package's messages named no config key
    "negative training workers": (["dataloader.train.num_workers=-1"],
                                  "error: dataloader.train.num_workers must be >= 0, got -1"),
    "training batch of 0": (["dataloader.train.total_batch_size=0"],
                            "error: dataloader.train.total_batch_size (0) must be positive and divisible"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_setting_value_that_cannot_be_meant_is_one_line_before_training(train_net, toy_dataset, tmp_path, capsys,
                                                                          case):
    overrides, expected = CASES[case]
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", *overrides]) == 2
    err = capsys.readouterr().err
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    assert not shows_traceback(err)
    assert not list(tmp_path.glob("model_*.pth"))


@pytest.mark.parametrize("override, message", [
    ("dataloader.test.batch_size=0", "batch_size should be a positive integer value, but got batch_size=0"),
    ("dataloader.test.num_workers=-1", "num_workers option should be non-negative"),
])
def test_a_test_loader_setting_torch_refuses_names_the_section_in_an_evaluation(train_net, toy_dataset, tmp_path,
                                                                                 capsys, override, message):
    # --eval-only gave torch's line alone, naming no config key
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}", override]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(
        f"error: the config's test loader (dataloader.test) cannot be built: {message}"), errors


def test_an_evaluation_in_another_channel_order_than_training_is_refused(train_net, toy_dataset, tmp_path, capsys):
    # --eval-only scored the model on BGR images it learnt as RGB without a word (AP 0.069 -> 0.033 on the trees)
    assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path}",
                          "dataloader.test.mapper.img_format=BGR"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == ["error: dataloader.train.mapper.img_format is RGB but dataloader.test.mapper."
                                "img_format is BGR: the model would be scored on images in another channel order than "
                                "it learnt; give both the same"]
    assert not shows_traceback(err) and not (tmp_path / "eval_results.json").exists()


def test_ema_weights_asked_for_but_absent_are_named(train_net, toy_dataset, tmp_path, capsys):
    # the trained weights were evaluated as if they were the EMA ones, without a word
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=2"]) == 0
    with logged_warnings("focus_detr.engine.inference_weights") as warnings:
        assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
                              f"train.init_checkpoint={tmp_path / 'model_final.pth'}",
                              "train.model_ema.enabled=True"]) == 0
    assert warnings == [f"train.model_ema asks for the EMA weights, but {tmp_path / 'model_final.pth'} holds none: "
                        "using its trained weights"]


def test_ema_weights_present_but_not_asked_for_are_named(train_net, toy_dataset, tmp_path):
    # a checkpoint trained with the average (and evaluated with it) was evaluated with its trained weights, silently
    assert train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=2",
                          "train.model_ema.enabled=True"]) == 0
    with logged_warnings("focus_detr.engine.inference_weights") as warnings:
        assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
                              f"train.init_checkpoint={tmp_path / 'model_final.pth'}"]) == 0
    assert warnings == [f"{tmp_path / 'model_final.pth'} also holds the EMA weights (their average over its "
                        "training): using its trained weights; train.model_ema.enabled=True uses the average"]
    with logged_warnings("focus_detr.engine.inference_weights") as warnings:  # the trained weights asked for by name
        assert train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={tmp_path / 'eval2'}",
                              f"train.init_checkpoint={tmp_path / 'model_final.pth'}", "train.model_ema.enabled=True",
                              "train.model_ema.use_for_eval=False"]) == 0
    assert warnings == []


@pytest.mark.parametrize("override, part, error", [
    ("model.backbone.stages.0.num_blocks=0", "detectron2.modeling.backbone.resnet.ResNet", "AssertionError: 0"),
    ("model.backbone.stem.norm=XYZ", "detectron2.modeling.backbone.resnet.BasicStem", "KeyError: 'XYZ'"),
    ("model.backbone.stem.out_channels=16", "detectron2.modeling.backbone.resnet.BasicStem",
     r"ValueError: num_channels \(16\) must be divisible by num_groups \(32\)"),
])
def test_a_backbone_setting_detectron2_asserts_on_names_the_part(override, part, error):
    # detectron2's assertion or lookup, as a traceback naming neither the part nor the setting
    import os

    from focus_detr.engine import ConfigError, build_model, load_config

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    trees = os.path.join(repo, "configs", "focus_detr_r18_trees.py")
    with pytest.raises(ConfigError, match=rf"^the config's model cannot be built: {part} failed with {error}; check "
                                          r"the settings you gave it \(model\.\*\)$"):
        build_model(load_config(trees, [override]), "cpu")


def test_an_evaluator_folder_copied_from_train_output_dir_follows_its_override(tmp_path):
    # detrex's configs write `dataloader.evaluator.output_dir = train.output_dir`, a copy: with train.output_dir
    # overridden, the run's results went into the config's folder (another run's, perhaps) without a word
    from focus_detr.engine import load_config

    config = tmp_path / "detrex_style.py"
    config.write_text(f"from detectron2.config import LazyConfig\n"
                      f"_base = LazyConfig.load({str(TREE_CONFIG.resolve())!r})\n"
                      "model, train, dataloader = _base.model, _base.train, _base.dataloader\n"
                      f"train.output_dir = {str(tmp_path / 'configured')!r}\n"
                      "dataloader.evaluator.output_dir = train.output_dir\n")
    run = str(tmp_path / "run")
    assert load_config(str(config)).dataloader.evaluator.output_dir == str(tmp_path / "configured")
    assert load_config(str(config), [f"train.output_dir={run}"]).dataloader.evaluator.output_dir == run
    elsewhere = str(tmp_path / "elsewhere")  # both overridden: each its own
    cfg = load_config(str(config), [f"train.output_dir={run}", f"dataloader.evaluator.output_dir={elsewhere}"])
    assert (cfg.train.output_dir, cfg.dataloader.evaluator.output_dir) == (run, elsewhere)


class _ThreeBetas(torch.optim.SGD):
    """An optimizer of three betas by default, as timm's Adan."""

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), weight_decay=0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay)


def test_optimizers_of_three_betas_and_late_schedules_and_text_factors_are_judged_right():
    # a valid Adan-like optimizer was refused for its three betas, a schedule starting in the last 0.5% of the run
    # as "0 throughout", and a text factor written in a config file was a TypeError traceback
    from detectron2.config import LazyCall as L
    from detectron2.solver import LRMultiplier
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    from focus_detr.engine.hooks import check_lr_multiplier
    from focus_detr.engine.optim import LrFactorByName, _default_betas

    assert _default_betas(L(_ThreeBetas)()) == 3 and _default_betas(L(torch.optim.AdamW)()) == 2
    assert _default_betas(L(torch.optim.SGD)()) is None
    check_lr_multiplier(MultiStepParamScheduler(values=[0.0, 1.0], milestones=[997], num_updates=1000))
    with pytest.raises(ValueError, match="factor must be a finite number >= 0, got '0.1'"):
        LrFactorByName(factor="0.1")
