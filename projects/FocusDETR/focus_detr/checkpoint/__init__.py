from .checkpointer import FocusDETRCheckpointer
from .official import convert_official_state_dict, is_official_layout

__all__ = ["FocusDETRCheckpointer", "convert_official_state_dict", "is_official_layout"]
