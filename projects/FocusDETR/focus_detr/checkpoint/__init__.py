from .checkpointer import CLASSES_KEY, FocusDETRCheckpointer, describe_mismatch
from .official import convert_official_state_dict, is_official_layout, to_model_keys
from .safe_load import CheckpointError, UnreadableCheckpointError, read_weights_file
from .safetensors_io import write_safetensors

__all__ = [
    "CLASSES_KEY",
    "CheckpointError",
    "FocusDETRCheckpointer",
    "UnreadableCheckpointError",
    "convert_official_state_dict",
    "describe_mismatch",
    "is_official_layout",
    "read_weights_file",
    "to_model_keys",
    "write_safetensors",
]
