"""The resumable training loader: state round-trips, worker count does not change the data, sharding by rank."""
import pytest
import torch
from detectron2.data import transforms as T

from focus_detr.data.dataset_mapper import DetrDatasetMapper
from engine_test_utils import toy_dataset  # noqa: F401 (fixture)
from focus_detr.engine.train_loader import ResumableTrainLoader


def _dataset(toy_dataset):
    from detectron2.data import DatasetCatalog

    return DatasetCatalog.get(toy_dataset)


def _mapper():
    return DetrDatasetMapper(
        augmentation=[T.RandomFlip(), T.ResizeShortestEdge((40, 48, 56), max_size=96, sample_style="choice")],
        augmentation_with_crop=[T.RandomFlip(), T.RandomCrop("absolute_range", (28, 44)), T.ResizeShortestEdge((40, 48), 96, "choice")],
    )


def _fingerprint(batch):
    return [(x["image_id"], tuple(x["image"].shape), int(x["image"].float().sum()), x["instances"].gt_boxes.tensor.tolist()) for x in batch]


def _take(iterator, n):
    return [_fingerprint(next(iterator)) for _ in range(n)]


def test_restored_state_continues_with_the_same_batches(toy_dataset):
    loader = ResumableTrainLoader(_dataset(toy_dataset), _mapper(), total_batch_size=3, seed=5)
    iterator = iter(loader)
    _take(iterator, 4)
    state = loader.state_dict()
    expected = _take(iterator, 6)  # crosses an epoch boundary (8 images)

    restored = ResumableTrainLoader(_dataset(toy_dataset), _mapper(), total_batch_size=3, seed=999)
    restored.load_state_dict(state)
    assert _take(iter(restored), 6) == expected


def test_the_global_rng_does_not_change_the_data(toy_dataset):
    first = _take(iter(ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 2, seed=5)), 3)
    torch.manual_seed(1234)
    import numpy as np

    np.random.seed(77)
    before = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    second = _take(iter(ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 2, seed=5)), 3)
    assert first == second
    # and loading does not consume the training run's randomness either
    assert (np.random.get_state()[1] == before[0]).all() and torch.equal(torch.get_rng_state(), before[1])


def test_worker_processes_deliver_the_same_stream(toy_dataset):
    in_process = _take(iter(ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 2, num_workers=0, seed=5)), 5)
    with_workers = _take(iter(ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 2, num_workers=2, seed=5)), 5)
    assert in_process == with_workers


def test_every_image_once_per_epoch_and_aug_differs_between_epochs(toy_dataset):
    loader = ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 1, seed=3, aspect_ratio_grouping=False)
    batches = _take(iter(loader), 16)
    first_epoch, second_epoch = batches[:8], batches[8:]
    assert sorted(b[0][0] for b in first_epoch) == list(range(1, 9))
    assert sorted(b[0][0] for b in second_epoch) == list(range(1, 9))
    assert [b[0][0] for b in first_epoch] != [b[0][0] for b in second_epoch]


@pytest.mark.parametrize("saved_world_size", [1, 2])
def test_a_run_with_another_batch_or_process_count_continues_after_the_images_drawn(toy_dataset, saved_world_size,
                                                                                  monkeypatch):
    """Resumed with another process count or batch size, the data went back to the start of the first epoch (the
    same images again, with a fixed train.seed); it now continues in the same order after the furthest image any
    process drew."""
    from detectron2.utils import comm

    saved = []
    for rank in range(saved_world_size):
        monkeypatch.setattr(comm, "get_world_size", lambda: saved_world_size)
        monkeypatch.setattr(comm, "get_rank", lambda: rank)
        loader = ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 2 * saved_world_size, seed=5,
                                      aspect_ratio_grouping=False)
        _take(iter(loader), 3 - rank)  # ranks draw unequally far
        saved.append(loader.state_dict())
    monkeypatch.setattr(comm, "get_world_size", lambda: 1)
    monkeypatch.setattr(comm, "get_rank", lambda: 0)
    continued = ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 1, seed=999, aspect_ratio_grouping=False)
    continued.continue_after(saved)
    stream = _take(iter(ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 1, seed=5,
                                             aspect_ratio_grouping=False)), 14)
    # 1 process: global positions 0..5 drawn; 2: rank 0 drew 0, 2, .., 10 and rank 1 drew 1, 3, 5, 7
    furthest = 5 if saved_world_size == 1 else 10
    assert _take(iter(continued), 3) == stream[furthest + 1:furthest + 4]


def test_state_for_another_world_size_is_rejected(toy_dataset):
    loader = ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 2, seed=5)
    state = dict(loader.state_dict(), world_size=4)
    with pytest.raises(ValueError, match="4 processes"):
        loader.load_state_dict(state)


def test_bad_batch_size_is_rejected(toy_dataset):
    with pytest.raises(ValueError, match="total_batch_size"):
        ResumableTrainLoader(_dataset(toy_dataset), _mapper(), 0)
