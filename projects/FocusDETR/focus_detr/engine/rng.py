"""Capturing and restoring every random-number generator that training touches (torch CPU/CUDA, numpy, python).

States are stored as tensors / plain Python objects so checkpoints stay loadable with ``torch.load(weights_only=True)``.
"""
import contextlib
import random

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "isolated_rng", "seed_for_position"]


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
