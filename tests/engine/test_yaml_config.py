"""A .yaml config (a run's saved config.yaml, one shared with weights) is read as data: detectron2's loader ran a
``!!python/object/apply`` tag while reading, and ``instantiate`` calls whatever a ``_target_`` names. Every config of
this project still reads back as detectron2 reads it."""
import os

import pytest
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

from focus_detr.engine import ConfigError
from focus_detr.engine.config_files import load_config
from focus_detr.engine.yaml_config import load_yaml_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(CONFIGS) if n.endswith(".py")))
def test_a_saved_config_reads_back_as_detectron2_reads_it(tmp_path, name):
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(LazyConfig.load(os.path.join(CONFIGS, name)), path)  # ShapeSpec objects, block classes by name
    ours, theirs = load_yaml_config(path), LazyConfig.load(path)
    assert OmegaConf.to_container(ours, resolve=False) == OmegaConf.to_container(theirs, resolve=False)


HOSTILE = {
    "apply": ("model: !!python/object/apply:os.system ['touch {marker}']",
              r" at line 1: the tag !!python/object/apply:os.system would run code when read"),
    "new": ("model: !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
            r" at line 1: the tag !!python/object/new:subprocess.Popen would run code when read"),
    "module": ("model:\n  block: !!python/module:os",
               r" at line 2: the tag !!python/module:os would run code when read"),
    "name": ("model:\n  block: !!python/name:os.system",
             r" at line 2: !!python/name:os.system is not a callable of detectron2.data.transforms, .*torch.optim"),
    "object": ("model:\n  spec: !!python/object:argparse.Namespace {{a: 1}}",
               r" at line 2: !!python/object:argparse.Namespace is not a dataclass of"),
    "target": ("model: {{backbone: {{_target_: os.system, command: 'touch {marker}'}}}}",
               r": model.backbone._target_ os.system is not a callable of"),
    # names that start with a buildable module and reach another through what it imported
    "target through a module": ("model: {{_target_: torch.nn.parallel.distributed.os.system, "
                                "command: 'touch {marker}'}}",
                                r": model._target_ torch.nn.parallel.distributed.os.system is not a callable of"),
    "name through a module": ("model:\n  load: !!python/name:torch.nn.functional.torch.hub.load",
                              r" at line 2: !!python/name:torch.nn.functional.torch.hub.load is not a callable of"),
    "private name": ("model: {{_target_: torch.nn.Module.__init_subclass__}}",
                     r": model._target_ torch.nn.Module.__init_subclass__ is not a callable of"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_yaml_config_that_would_run_other_code_is_refused_before_anything_runs(tmp_path, kind):
    content, message = HOSTILE[kind]
    marker = tmp_path / "ran"
    config = tmp_path / "config.yaml"
    config.write_text(content.format(marker=marker) + "\n")
    with pytest.raises(ConfigError, match=rf"^config file {config}{message}.*use the .py config it came from$"):
        load_config(str(config))
    assert not marker.exists()


def test_a_yaml_config_that_is_no_mapping_is_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("5\n")
    with pytest.raises(ConfigError, match=rf"^config file {config} holds a int, not a LazyConfig"):
        load_config(str(config))


def test_a_saved_config_cut_inside_its_model_section_is_one_line(tmp_path):
    # the saved YAML writes each _target_ last: cut short, the model section built a DictConfig, and `model.to(device)`
    # failed with omegaconf's "Missing key to"
    from focus_detr.engine import build_model

    cfg = load_config(os.path.join(CONFIGS, "focus_detr_r18_trees.py"))
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))
    text = path.read_text()
    cut = tmp_path / "cut.yaml"
    cut.write_text(text[:text.index("model:")] + "model:\n  num_classes: 1\n")
    with pytest.raises(ConfigError, match=r"^the config's model builds a DictConfig, not an nn.Module \(no "
                                          r"model._target_: a saved config.yaml cut short\?\)$"):
        build_model(load_config(str(cut)), "cpu")
