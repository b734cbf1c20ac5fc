"""A training data loader whose position can be saved and restored exactly (for bit-exact ``--resume``).

Every sample is a pure function of its *position* in an endless stream: position -> (epoch, slot) -> dataset index
through a per-epoch permutation seeded by (seed, epoch), and the augmentation randomness is seeded by
(seed, position). Worker processes, prefetching and the number of workers therefore do not change what the model
sees. Rank ``r`` of ``W`` processes reads global positions ``r, r + W, r + 2W, ...`` (like detectron2's
``TrainingSampler``). Batches are grouped by aspect ratio (landscape / portrait) in the main process like
detectron2's ``AspectRatioGroupedDataset``; the loader's state (next position, the positions waiting in the
aspect-ratio buckets) is recorded after every batch, and restoring it regenerates exactly the same future batches.
"""
import logging
import signal
import sys
import threading
import time
from typing import Optional

import torch
from detectron2.data import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .cli import DATA_WORKER_DIED
from .interrupt import ignore_stop_signals
from .rng import isolated_rng, seed_for_position

__all__ = ["DataWorkerDied", "ResumableTrainLoader", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)


_PERMUTATION_STREAM, _AUGMENTATION_STREAM = 0, 1


class DataWorkerDied(OSError):
    """A data-loading worker process died. Raised where the next batch is fetched, so the iterations before it are
    intact and can be saved; ``remedy`` says what to do before resuming."""

    def __init__(self, message, remedy=None):
        super().__init__(message)
        self.remedy = remedy


def _worker_died(torch_message, workers):
    """The :class:`DataWorkerDied` for torch's message about a dead worker; ``workers``: the iterator's worker
    processes, whose exit codes say how they ended (torch's message may not)."""
    endings = []
    for worker in workers:
        code = worker.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
            endings.append(f"process {worker.pid} killed by {name}")
        else:
            endings.append(f"process {worker.pid} exited with status {code}")
    what = "; ".join(endings) or torch_message.strip().split(". ")[0]
    if "SIGKILL" in what or "killed by signal: Killed" in what:  # on Linux usually the out-of-memory killer
        return DataWorkerDied(f"a data-loading worker process died ({what}: out of memory?)",
                              "free memory or lower dataloader.train.num_workers")
    return DataWorkerDied(f"a data-loading worker process died ({what})",
                          "add dataloader.train.num_workers=0 to see its error in the main process")


def _identity(x):
    return x


class _PositionStream(IterableDataset):
    """Yields ``(position, mapped_sample)`` for ``replay_positions`` and then ``next_position, next_position+1, ...``
    (positions local to this rank). Worker ``w`` of ``K`` handles every K-th item, and the DataLoader interleaves
    workers round-robin, so the output order does not depend on ``K``."""

    def __init__(self, dataset, mapper, seed, rank, world_size, replay_positions, next_position, shuffle):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.replay_positions = list(replay_positions)
        self.next_position = next_position
        self.shuffle = shuffle

    def _positions(self):
        yield from self.replay_positions
        position = self.next_position
        while True:
            yield position
            position += 1

    def _dataset_index(self, global_position, permutation_cache):
        size = len(self.dataset)
        epoch, slot = divmod(global_position, size)
        if not self.shuffle:
            return slot
        if permutation_cache.get("epoch") != epoch:
            generator = torch.Generator().manual_seed(seed_for_position(self.seed, _PERMUTATION_STREAM, epoch))
            permutation_cache["epoch"] = epoch
            permutation_cache["order"] = torch.randperm(size, generator=generator).tolist()
        return permutation_cache["order"][slot]

    def __iter__(self):
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        permutation_cache = {}
        for item_number, position in enumerate(self._positions()):
            if item_number % num_workers != worker_id:
                continue
            global_position = self.rank + self.world_size * position
            dataset_dict = self.dataset[self._dataset_index(global_position, permutation_cache)]
            with isolated_rng(seed_for_position(self.seed, _AUGMENTATION_STREAM, global_position)):
                sample = self.mapper(dataset_dict)
            if sample is None:
                raise ValueError(
                    f"the dataset mapper returned None for {dataset_dict.get('file_name', dataset_dict)}; "
                    "filter such images out of the dataset instead"
                )
            yield position, sample


class ResumableTrainLoader:
    """Endless iterable of training batches (``list[dict]`` of ``total_batch_size / world_size`` mapped samples)
    with ``state_dict()`` / ``load_state_dict()``.

    ``state_dict()`` describes the position after the last batch handed out; load it before iterating.
    """

    def __init__(
        self, dataset, mapper, total_batch_size, num_workers=0, seed=None, aspect_ratio_grouping=True, shuffle=True
    ):
        """
        Args:
            dataset (list[dict] or Dataset): detectron2 dataset dicts.
            mapper (callable): dataset dict -> model input dict (must not return None).
            total_batch_size (int): images per iteration over all processes; divisible by the world size.
            num_workers (int): data-loading worker processes per rank (0 = load in the main process).
            seed (int or None): the stream's seed; None draws one shared by all ranks (it is part of the state).
            aspect_ratio_grouping (bool): batch landscape and portrait images separately (less padding).
            shuffle (bool): a fresh permutation of the dataset every epoch.
        """
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size != 0:
            raise ValueError(
                f"dataloader.train.total_batch_size ({total_batch_size}) must be positive and divisible by the number "
                f"of processes ({world_size})"
            )
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        if num_workers < 0:
            raise ValueError(f"dataloader.train.num_workers must be >= 0, got {num_workers}")
        # as train.seed: torch's Generator refused a larger one only at the first batch ("Overflow when unpacking")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
            raise ValueError(f"dataloader.train.seed must be an integer from 0 to 2**32 - 1, or null for a seed drawn "
                             f"at the start, got {seed!r}")
        self.dataset = dataset if not isinstance(dataset, list) else DatasetFromList(dataset, copy=False)
        self.mapper = mapper
        self.batch_size = total_batch_size // world_size
        self.num_workers = num_workers
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.shuffle = shuffle
        self.rank = comm.get_rank()
        self.world_size = world_size
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self._next_position = 0
        self._waiting_positions = [[], []]  # per aspect-ratio bucket, in arrival order

    def state_dict(self):
        return {
            "seed": self.seed,
            "next_position": self._next_position,
            "waiting_positions": [list(bucket) for bucket in self._waiting_positions],
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state):
        if (state["world_size"], state["batch_size"]) != (self.world_size, self.batch_size):
            raise ValueError(
                f"the saved data-loader state is for {state['world_size']} processes x {state['batch_size']} images; "
                f"this run has {self.world_size} x {self.batch_size}"
            )
        self.seed = int(state["seed"])
        self._next_position = int(state["next_position"])
        self._waiting_positions = [list(bucket) for bucket in state["waiting_positions"]]

    def continue_after(self, states):
        """Continues the stream of a run with another process count or batch size: ``states`` are the
        ``state_dict()`` of each of its processes. The next sample is the one after the furthest any of them drew,
        in the same order (the same seed); the samples they drew but had not yet batched are skipped. The exact
        batches cannot continue: they depend on the batch size and on which process draws which position."""
        drawn = [state["rank"] + state["world_size"] * (state["next_position"] - 1)
                 for state in states if state["next_position"] > 0]
        following = max(drawn) + 1 if drawn else 0
        self.seed = int(states[0]["seed"])
        # this rank's first global position at or after `following`: rank + world_size * local position
        self._next_position = max(0, -(-(following - self.rank) // self.world_size))
        self._waiting_positions = [[], []]

    def _bucket_of(self, sample):
        if not self.aspect_ratio_grouping:
            return 0
        height, width = sample["image"].shape[-2:]
        return 0 if width > height else 1

    def __iter__(self):
        replay = sorted(p for bucket in self._waiting_positions for p in bucket)
        stream = _PositionStream(
            self.dataset, self.mapper, self.seed, self.rank, self.world_size, replay, self._next_position, self.shuffle
        )
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            # an explicit generator keeps DataLoader start-up from drawing on the global torch RNG
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals,  # a Ctrl-C / SIGTERM stops training at an iteration boundary
            multiprocessing_context=_worker_start_method() if self.num_workers > 0 else None,
        )
        replay_set = set(replay)
        buckets = [[], []]
        self._waiting_positions = [[], []]
        for position, sample in _reporting_dead_workers(loader):
            if position in replay_set:
                replay_set.discard(position)
            else:
                self._next_position = position + 1
            bucket = self._bucket_of(sample)
            buckets[bucket].append(sample)
            self._waiting_positions[bucket].append(position)
            if len(buckets[bucket]) == self.batch_size:
                batch = buckets[bucket]
                buckets[bucket] = []
                self._waiting_positions[bucket] = []
                yield batch


def _worker_start_method():
    """How the workers start: forked on Linux, as in a plain Python process there. The processes
    ``--num-gpus N`` starts are spawned, and their default is then to spawn the workers too: each imported torch,
    detectron2 and the config's modules afresh (seconds), and a Ctrl-C to the job in that window killed them before
    :func:`ignore_stop_signals` ran, ending the run as "a data-loading worker process died" with nothing saved."""
    return "fork" if sys.platform.startswith("linux") else None  # macOS spawns: fork is unsafe with its frameworks


def _reporting_dead_workers(loader):
    """Iterates ``loader``, turning the error of a worker process that died (torch's, or the broken pipe it was
    sending a batch through) into :class:`DataWorkerDied`.

    torch also installs a SIGCHLD handler that raises that error in the main thread wherever it is when a worker
    dies: in the middle of a forward, a backward or an optimiser step, where no consistent state is left to save.
    With that handler off, the death is found where the next batch is fetched (torch checks its workers when one is
    late, within 5 s); the handler goes only where it is torch's own and this is the main thread."""
    iterator = iter(loader)
    handler = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    if getattr(handler, "__module__", "") == "torch.utils.data._utils.signal_handling" and (
        threading.current_thread() is threading.main_thread()
    ):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:
            # torch's own error, or what the pipe to a worker killed mid-transfer raised (a connection reset, an end
            # of file), which can come before the worker's exit is visible: hence the wait
            workers = getattr(iterator, "_workers", ())
            pipe_error = isinstance(error, (OSError, EOFError))
            if not (DATA_WORKER_DIED.search(str(error)) or _a_worker_died(workers, wait=pipe_error)):
                raise
            raise _worker_died(str(error), workers) from error
        yield item


def _a_worker_died(workers, wait):
    """Whether one of ``workers`` (processes) has ended with an error; with ``wait``, gives them a second to."""
    deadline = time.monotonic() + (1.0 if wait else 0.0)
    while True:
        if any(worker.exitcode not in (None, 0) for worker in workers):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def build_resumable_train_loader(
    dataset,
    mapper,
    total_batch_size: int,
    num_workers: int = 0,
    seed: Optional[int] = None,
    aspect_ratio_grouping: bool = True,
    shuffle: bool = True,
):
    """LazyConfig entry point: same arguments as :class:`ResumableTrainLoader`."""
    return ResumableTrainLoader(
        dataset,
        mapper,
        total_batch_size,
        num_workers=num_workers,
        seed=seed,
        aspect_ratio_grouping=aspect_ratio_grouping,
        shuffle=shuffle,
    )
