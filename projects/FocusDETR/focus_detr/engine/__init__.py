"""Training / evaluation machinery used by ``train_net.py`` and ``tools/``: config loading with checked overrides,
the training step (AMP on CPU/GPU, gradient clipping), the autocast settings of training and inference, atomic
checkpoints with exact resume (RNG + data position), EMA, evaluation, the Python predictor, one run per output
folder, and stopping cleanly on Ctrl-C / SIGTERM."""
from .checkpoint import AtomicDetectionCheckpointer, atomic_write, write_json
from .config import ConfigError, check_datasets_registered, check_override_keys
from .config_files import load_config
from .evaluation import evaluate
from .hooks import EMAHook, IsolatedRngEvalHook, ResumableCheckpointHook, restore_rank_state
from .interrupt import StopOnRequestHook, StopRequest, TrainingInterrupted
from .optim import LrFactorByName
from .output_lock import OutputDirInUseError, OutputDirLock, claim_output_dir
from .predictor import FocusDETRPredictor
from .precision import amp_autocast, inference_amp_dtype, resolve_amp_dtype, training_amp_dtype
from .rng import capture_rng_state, isolated_rng, restore_rng_state
from .resume import check_before_setup
from .evaluation_run import run_evaluation
from .runner import build_model, end_process_group, run_training, wrap_ddp
from .settings import check_output_dir, require_sections, resolve_device
from .train_loader import ResumableTrainLoader, build_resumable_train_loader
from .trainer import DetrTrainer

__all__ = [
    "AtomicDetectionCheckpointer",
    "amp_autocast",
    "atomic_write",
    "ConfigError",
    "DetrTrainer",
    "EMAHook",
    "FocusDETRPredictor",
    "IsolatedRngEvalHook",
    "LrFactorByName",
    "OutputDirInUseError",
    "OutputDirLock",
    "ResumableCheckpointHook",
    "ResumableTrainLoader",
    "StopOnRequestHook",
    "StopRequest",
    "TrainingInterrupted",
    "build_model",
    "build_resumable_train_loader",
    "capture_rng_state",
    "check_before_setup",
    "check_datasets_registered",
    "check_output_dir",
    "check_override_keys",
    "claim_output_dir",
    "end_process_group",
    "evaluate",
    "inference_amp_dtype",
    "isolated_rng",
    "load_config",
    "resolve_amp_dtype",
    "require_sections",
    "resolve_device",
    "restore_rank_state",
    "restore_rng_state",
    "run_evaluation",
    "run_training",
    "training_amp_dtype",
    "wrap_ddp",
    "write_json",
]
