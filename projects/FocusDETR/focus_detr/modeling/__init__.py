from .criterion import FocusDETRCriterion
from .decoder import DINODecoder, DINODecoderLayer
from .denoising import ContrastiveDenoising, DenoisingQueries
from .encoder import CascadeDualAttentionEncoder, DualAttentionEncoderLayer
from .focus_detr import FocusDETR
from .foreground_selector import ForegroundPredictor, ForegroundSelection, ForegroundTokenSelector
from .foreground_targets import ForegroundTargetAssigner
from .matcher import HungarianMatcher
from .neck import ChannelMapper
from .transformer import FocusDETRTransformer, TransformerOutput

__all__ = [k for k in globals() if not k.startswith("_")]
