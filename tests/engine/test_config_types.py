"""The values a config gives typed constructor arguments: an integer, a number, True/False, None only where the
argument takes it; from config files as from overrides, one line naming the key."""
import os
from typing import Optional, Sequence, Tuple

import pytest
from detectron2.config import LazyCall as L
from omegaconf import OmegaConf

from focus_detr.engine.config import ConfigError, apply_overrides
from focus_detr.engine.config_files import load_config
from focus_detr.engine.config_types import check_argument_types
from engine_test_utils import REPO_ROOT


class Part:
    def __init__(self, count: int = 3, share: float = 0.5, enabled: bool = True, limit: Optional[int] = None,
                 name: str = "x", inner=None, size: "int | None" = 1, strides: Sequence[int] = (8, 16),
                 means: Tuple[float, ...] = (1.0,), ranges: Sequence[Sequence[float]] = ((0.0, 1.0),)):
        pass


def _config(**part):
    return OmegaConf.create({"model": L(Part)(**part)})


@pytest.mark.parametrize("part", [
    dict(count=3, share=1, enabled=False, limit=None, name="y"),  # an integer is a number too
    dict(limit=7),
    dict(size=None),  # int | None takes None, whatever the default
    dict(strides=[4, 8], means=[1, 2.5], ranges=[[0, 1]]),  # lists of lists are left to the constructor
    dict(inner=L(Part)(count=2)),  # a nested part is checked in its own right
    dict(count="${..other}"),  # an interpolation is checked as it resolves
])
def test_values_of_the_annotated_kinds_pass(part):
    cfg = _config(**part)
    cfg.other = 4
    check_argument_types(cfg)


@pytest.mark.parametrize("part, message", [
    (dict(count=300 / 3), r"config key model.count must be an integer, got 100.0 \(a division in a config file gives "
                          r"a float: use //"),
    (dict(count=None), r"config key model.count must be an integer, got None \(it has no 'none' setting\)"),
    (dict(count=True), r"config key model.count must be an integer, got True"),
    (dict(share="half"), r"config key model.share must be a number, got 'half'"),
    (dict(enabled=1), r"config key model.enabled must be True or False, got 1"),
    (dict(inner=L(Part)(limit=2.5)), r"config key model.inner.limit must be an integer, got 2.5"),
    (dict(size=1.5), r"config key model.size must be an integer, got 1.5"),
    (dict(strides=None), r"config key model.strides must be a list of integers, got None \(it has no 'none'"),
    (dict(strides=[8.5, 16]), r"config key model.strides must be a list of integers, got \[8.5, 16\]"),
    (dict(means=4.0), r"config key model.means must be a list of numbers, got 4.0"),
])
def test_values_of_other_kinds_are_named(part, message):
    with pytest.raises(ConfigError, match=message):
        check_argument_types(_config(**part))


def test_a_tree_config_with_a_float_query_count_is_refused_at_load(tmp_path):
    # reached the model as torch.empty(100.0, ...): "argument 'size' must be tuple of ints", a traceback
    config = tmp_path / "queries.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        f"globals().update(LazyConfig.load({_trees_config()!r}))\n"
        "model.transformer.num_queries = 300 / 3\n"
    )
    with pytest.raises(ConfigError, match="config key model.transformer.num_queries must be an integer, got 100.0"):
        load_config(str(config), [])


def test_null_overrides_of_typed_settings_are_refused():
    cfg = load_config(_trees_config(), [])
    with pytest.raises(ConfigError,
                       match="config key model.transformer.encoder.ffn_dropout must be a number, got None"):
        apply_overrides(cfg, ["model.transformer.encoder.ffn_dropout=null"])


@pytest.mark.parametrize("override, message", [
    # each reached its constructor as None: 'NoneType' object is not callable (or has no attribute), a traceback
    ("model.neck=null", "config key model.neck cannot be null: FocusDETR needs it"),
    ("model.transformer.foreground_selector=null",
     "config key model.transformer.foreground_selector cannot be null: FocusDETRTransformer needs it"),
    ("dataloader.train.mapper=null", "config key dataloader.train.mapper cannot be null: build_resumable_train_loader "
                                     "needs it"),
    ("optimizer.params=null", "config key optimizer.params cannot be null: AdamW needs it"),
])
def test_null_for_a_part_that_has_no_default_is_refused(override, message):
    cfg = load_config(_trees_config(), [])
    with pytest.raises(ConfigError) as error:
        apply_overrides(cfg, [override])
    assert str(error.value) == message + " (it has no default to fall back on)"


def test_null_for_a_part_with_a_default_is_that_default():
    cfg = load_config(_trees_config(), ["model.criterion.matcher=null", "dataloader.evaluator=null"])
    assert cfg.model.criterion.matcher is None and cfg.dataloader.evaluator is None


@pytest.mark.parametrize("override, message", [
    # a constructor's TypeError traceback, a key set although "+" adds, a deletion detectron2 cannot apply
    ("+model.foo=1", "unknown config key 'model.foo' in override '+model.foo=...': the part it sets takes no such "
                     "argument"),
    ("+model.transformer.foreground_selector.keep_ratoi=0.3",
     "unknown config key 'model.transformer.foreground_selector.keep_ratoi' in override "
     "'+model.transformer.foreground_selector.keep_ratoi=...': the part it sets takes no such argument (did you mean: "
     "model.transformer.foreground_selector.keep_ratio, model.transformer.foreground_selector.cascade_keep_ratios?)"),
    ("+train.max_iter=7", "config override '+train.max_iter=...' adds a key that exists already: set it with "
                          "train.max_iter=..."),
    ("~train.max_iter=", "config override '~train.max_iter=' deletes a key, which detectron2's configs do not "
                         "support; set it to another value, or to null where null is a setting"),
    # without '=': "not enough values to unpack (expected 2, got 1)"
    ("~train.seed", "config override '~train.seed' deletes a key, which detectron2's configs do not support; set it "
                    "to another value, or to null where null is a setting"),
    ("train.max_iter", "config override 'train.max_iter' is not of the form key=value"),
    ("train.max_iter 5", "config override 'train.max_iter 5' is not of the form key=value"),
    # a train entry that nothing reads was ignored (detrex's fast_dev_run ran every iteration, wandb logged nowhere)
    ("+train.wandb.enabled=True", "unknown config key 'train.wandb' in override '+train.wandb.enabled=...': the "
     "train section has no such setting: nothing would read it (detrex's train.wandb has no setting here: metrics go "
     "to metrics.json and TensorBoard events in train.output_dir (tools/plot_metrics.py draws them))"),
    ("train.fast_dev_run.enabled=True", "unknown config key 'train.fast_dev_run' in override "
     "'train.fast_dev_run.enabled=True' (detrex's train.fast_dev_run has no setting here: a quick trial run is "
     "train.max_iter=20 train.eval_period=10 train.log_period=1)"),
    ("+train.foo=1", "unknown config key 'train.foo' in override '+train.foo=...': the train section has no such "
                     "setting: nothing would read it"),
    # a new section, or a new entry of dataloader, was added and ignored; the error without + recommended +
    ("+foo.bar=1", "unknown config key 'foo' in override '+foo.bar=...': nothing would read it"),
    ("foo.bar=1", "unknown config key 'foo' in override 'foo.bar=1'"),
    ("+dataloader.tset.num_workers=0", "unknown config key 'dataloader.tset' in override "
     "'+dataloader.tset.num_workers=...': nothing would read it (did you mean: dataloader.test?)"),
])
def test_added_deleted_and_unread_keys_are_checked(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(_trees_config(), [override])
    assert str(error.value) == message


@pytest.mark.parametrize("line, message", [
    # a config file's argument that the part does not take ended in "unexpected keyword argument", a traceback
    ("model.num_queries = 300", "config key model.num_queries is not a setting of FocusDETR (detrex's "
                                "model.num_queries is model.transformer.num_queries here)"),
    ("model.transformer.foreground_selector.keep_ratoi = 0.3",
     "config key model.transformer.foreground_selector.keep_ratoi is not a setting of ForegroundTokenSelector (did "
     "you mean: keep_ratio, cascade_keep_ratios?)"),
    ("model.criterion.loss_class_type = 'focal_loss'",
     "config key model.criterion.loss_class_type is not a setting of FocusDETRCriterion (detrex's "
     "model.criterion.loss_class_type has no setting here: the class loss is the official sigmoid focal loss)"),
])
def test_an_argument_a_config_file_gives_that_its_part_does_not_take_is_one_line(tmp_path, line, message):
    config = tmp_path / "mine.py"
    config.write_text("from detectron2.config import LazyConfig\n"
                      f"globals().update(LazyConfig.load({_trees_config()!r}))\n{line}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(config), [])
    assert str(error.value) == message


@pytest.mark.parametrize("lines, message", [
    # each was read by nothing: detrex's fast_dev_run ran all iterations, wandb logged nowhere
    ("train.fast_dev_run = dict(enabled=True)", "config key train.fast_dev_run is not a setting of the train section: "
     "nothing would read it (detrex's train.fast_dev_run has no setting here: a quick trial run is train.max_iter=20 "
     "train.eval_period=10 train.log_period=1)"),
    ("train.model_ema.use_ema_weights_for_eval_only = True", "config key train.model_ema.use_ema_weights_for_eval_only "
     "is not a setting of the train section: nothing would read it (detrex's "
     "train.model_ema.use_ema_weights_for_eval_only is train.model_ema.use_for_eval here, which defaults to True and "
     "applies to the evaluations during training too)"),
    ("train.checkpointer.max_to_kep = 3", "config key train.checkpointer.max_to_kep is not a setting of the train "
     "section: nothing would read it (did you mean: train.checkpointer.max_to_keep?)"),
    # DistributedDataParallel's TypeError, only in a run of several processes
    ("train.ddp.find_unused_parameter = True", "config key train.ddp.find_unused_parameter is not a setting of the "
     "train section: nothing would read it (did you mean: train.ddp.find_unused_parameters, "
     "train.ddp.skip_all_reduce_unused_params?)"),
    # detrex's common train config, switched off as it writes them, asks for nothing: a ported config keeps them
    ("train.fast_dev_run = dict(enabled=False)\ntrain.wandb = dict(enabled=False, params=dict(project='detrex'))\n"
     "train.model_ema.device = ''\ntrain.ddp.static_graph = True", None),
])
def test_a_train_entry_that_nothing_reads_is_refused(tmp_path, lines, message):
    config = tmp_path / "mine.py"
    config.write_text("from detectron2.config import LazyConfig\n"
                      f"globals().update(LazyConfig.load({_trees_config()!r}))\n{lines}\n")
    if message is None:
        assert load_config(str(config), []).train.ddp.static_graph is True
        return
    with pytest.raises(ConfigError) as error:
        load_config(str(config), [])
    assert str(error.value) == message


def test_every_train_entry_of_the_configs_and_of_detectron2_is_accepted():
    # detectron2's default_setup reads train.cudnn_benchmark, which a first schema refused
    from focus_detr.engine.config import flattened
    from focus_detr.engine.train_section import train_entry_problem

    cfg = load_config(_trees_config(), ["+train.cudnn_benchmark=True"])
    keys = [f"train.{key}" for key in flattened(OmegaConf.to_container(cfg.train))]
    assert "train.checkpointer.max_to_keep" in keys and "train.cudnn_benchmark" in keys
    assert [key for key in keys if train_entry_problem(key)] == []


def test_detrex_common_train_section_as_detrex_writes_it_is_accepted(tmp_path):
    # detrex's configs/common/train.py defaults, merged into ours: switched off, they ask for nothing here
    config = tmp_path / "ported.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        f"globals().update(LazyConfig.load({_trees_config()!r}))\n"
        "train.fast_dev_run = dict(enabled=False)\n"
        "train.wandb = dict(enabled=False, params=dict(dir='./wandb_output', project='detrex', name='x'))\n"
        "train.model_ema.update(dict(enabled=False, decay=0.999, device='', use_ema_weights_for_eval_only=False))\n")
    load_config(str(config), [])
    config.write_text(config.read_text().replace("enabled=False, decay", "enabled=True, decay"))
    with pytest.raises(ConfigError, match=r"train.model_ema.use_ema_weights_for_eval_only is not a setting .* is "
                                          r"train.model_ema.use_for_eval here"):
        load_config(str(config), [])  # with an average, detrex's False means other weights than ours


def test_every_key_a_config_file_gives_that_nothing_takes_is_named_at_once(tmp_path):
    # a config ported from detrex met its keys one run at a time
    config = tmp_path / "ported.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        f"globals().update(LazyConfig.load({_trees_config()!r}))\n"
        "model.device = 'cuda'\n"
        "model.criterion.loss_class_type = 'focal_loss'\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(config), [])
    assert str(error.value) == (
        "2 config keys are not settings: model.device is not a setting of FocusDETR (detrex's model.device is "
        "train.device here); model.criterion.loss_class_type is not a setting of FocusDETRCriterion (detrex's "
        "model.criterion.loss_class_type has no setting here: the class loss is the official sigmoid focal loss)")


def test_detrex_names_on_the_command_line_are_pointed_to_ours():
    with pytest.raises(ConfigError) as error:
        load_config(_trees_config(), ["model.dn_number=50"])
    assert str(error.value) == ("unknown config key 'model.dn_number' in override 'model.dn_number=50' (detrex's "
                                "model.dn_number is model.denoising.dn_number here)")


def _trees_config():
    return os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
