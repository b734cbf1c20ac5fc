"""Capturing and restoring every random-number generator that training touches (torch CPU/CUDA, numpy, python).

States are stored as tensors / plain Python objects so checkpoints stay loadable with ``torch.load(weights_only=True)``.
"""
import contextlib
import random
import secrets

import numpy as np
import torch
import yaml
from detectron2.utils import comm

__all__ = ["capture_rng_state", "fix_random_seed", "restore_rng_state", "isolated_rng", "seed_for_position"]


def capture_rng_state(include_cuda=True):
    """Returns a dict with the current state of the torch, CUDA (when initialised), numpy and python generators."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng(seed=None):
    """Runs the block with (optionally re-seeded) generators and puts the outer torch CPU / numpy / python states
    back afterwards, so the block consumes no randomness of the surrounding program."""
    saved = capture_rng_state(include_cuda=False)
    try:
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone
            np.random.seed(seed % 2**32)
            random.seed(seed)
        yield
    finally:
        restore_rng_state(saved)


def seed_for_position(base_seed, *keys):
    """A 31-bit seed that depends only on (base_seed, *keys) (non-negative ints), e.g. (seed, stream, position)."""
    return int(np.random.SeedSequence([int(base_seed) % 2**63, *map(int, keys)]).generate_state(1)[0]) & 0x7FFFFFFF


def fix_random_seed(train, earlier_config=None, continues_run=False):
    """For a training run with ``train.seed`` -1 (draw a random seed), sets ``train.seed`` to the seed it runs with,
    before detectron2's set-up seeds the generators with it and writes ``config.yaml``: the file said -1, so running
    it again drew another seed and trained another model. A new run draws the seed (one for all processes, as
    detectron2 offsets it by the rank). A run that ``continues_run`` (a resume from a checkpoint) keeps the one in
    ``earlier_config`` (the folder's ``config.yaml`` bytes, read on the main process), since the generators' states
    come from the checkpoint and the file must keep describing the run's start; without one there (a run started
    before seeds were written) it stays -1, as nothing can tell the seed the run started with. Returns the line to
    log, or None when the seed was given."""
    if train.get("seed", -1) != -1:
        return None
    earlier = _seed_of_saved_config(earlier_config)
    # not numpy's global generator: earlier code in this process (a tool's previous run) would have seeded it
    drawn = secrets.randbelow(2**31)
    if comm.get_world_size() > 1:  # every process takes the main process's (only it reads the folder's files)
        earlier, drawn, continues_run = comm.all_gather((earlier, drawn, continues_run))[0]
    if earlier is not None:
        train.seed = earlier
        return f"train.seed is -1: keeping {earlier}, the seed this run started with (config.yaml)"
    if continues_run:
        return ("train.seed is -1, and the run's config.yaml records no seed (it was started before seeds were "
                "written there): the seed it started with is unknown, and config.yaml keeps -1")
    train.seed = drawn
    return f"train.seed is -1: drew {drawn} (in config.yaml: running that file again repeats this run)"


def _seed_of_saved_config(data):
    """``train.seed`` of a saved config (bytes) when it is a seed (not -1), else None (no file, or unreadable)."""
    try:
        seed = yaml.safe_load(data)["train"]["seed"]
    except Exception:  # noqa: BLE001 (any other file, or none: draw a new seed)
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32 else None
