"""The augmentations of a loader's mapper, checked before the loader is built: detectron2 checks their settings with
assertions that name no config key (some with no message, one only at the first image it crops), and takes a
probability outside [0, 1] without a word."""
import traceback

from detectron2.config import instantiate
from detectron2.data import transforms as T
from omegaconf import DictConfig, ListConfig

from .cli import raised_in_this_package
from .config import ConfigError
from .config_types import is_number, located_target

__all__ = ["augmentation_nodes", "check_augmentations"]


def augmentation_nodes(node, key):
    """``(config key, LazyCall node)`` of each detectron2 ``Augmentation`` in the config subtree ``node`` (whose key is
    ``key``, e.g. "dataloader.train"), the inner ones of an augmentation before it. Interpolations are not followed
    (the node they name is checked where it is written)."""
    if isinstance(node, DictConfig):
        children = [(name, node._get_node(name)) for name in node.keys()]
    elif isinstance(node, ListConfig):
        children = [(index, node._get_node(index)) for index in range(len(node))]
    else:
        return []
    found = []
    for name, child in children:
        if isinstance(child, (DictConfig, ListConfig)):
            found += augmentation_nodes(child, f"{key}.{name}")
    target = located_target(node.get("_target_")) if isinstance(node, DictConfig) and "_target_" in node else None
    if isinstance(target, type) and issubclass(target, T.Augmentation):
        found.append((key, node))
    return found


def check_augmentations(node, key):
    """Raises ConfigError (one line naming the config key) for the first augmentation under ``node`` (config key
    ``key``) that detectron2 refuses to build (``sample_style=bogus``: "AssertionError: bogus"), that has a ``prob``
    outside [0, 1] (RandomFlip's ``prob=1.5`` flipped every image without a word), or a RandomCrop of ``crop_type``
    absolute_range whose ``crop_size`` is not (min, max) (refused only at the first image it crops). A fault of this
    package's own code passes unchanged."""
    for part_key, part in augmentation_nodes(node, key):
        name = getattr(located_target(part.get("_target_")), "__name__", "augmentation")
        prob = part.get("prob", None)
        if is_number(prob) and not 0 <= prob <= 1:
            raise ConfigError(f"{part_key}.prob is the probability that {name} applies, in [0, 1], got {prob}")
        try:
            augmentation = instantiate(part)
        except (AssertionError, TypeError, ValueError) as error:
            if raised_in_this_package(error):
                raise
            raise ConfigError(f"{part_key} ({name}) cannot be built: {_failure(error)}; check its settings "
                              f"({part_key}.*)") from None
        if isinstance(augmentation, T.RandomCrop) and augmentation.crop_type == "absolute_range":
            sides = augmentation.crop_size
            if not (isinstance(sides, (list, tuple, ListConfig)) and len(sides) == 2 and all(map(is_number, sides))):
                raise ConfigError(f"{part_key}.crop_size is the (smallest, largest) side of a crop of crop_type "
                                  f"absolute_range, two numbers, got {sides!r}")
            low, high = sides
            if low > high:
                raise ConfigError(f"{part_key}.crop_size is the (smallest, largest) side of a crop of crop_type "
                                  f"absolute_range, got [{low}, {high}]: give [{high}, {low}]")


def _failure(error):
    """What failed, in words: the message, and for an assertion the check that failed where it fits on a line
    (detectron2's ``assert crop_type in [...]`` has no message)."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    line = (frames[-1].line or "").strip() if frames else ""
    if isinstance(error, AssertionError) and line.startswith("assert ") and not line.endswith(("(", ",", "\\")):
        text += f" ({line})"
    return text
