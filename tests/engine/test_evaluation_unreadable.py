"""An unreadable test image is left out of the evaluation, named in a warning, and the metrics say over how many
images they are; any other error of the test data still stops it."""
import json

import pytest
import torch

from cli_output import logged_warnings, shows_traceback
from engine_test_utils import TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)
from focus_detr.data import UnreadableImageError
from focus_detr.engine import evaluation, readable_batches
from focus_detr.engine.readable_batches import ReadableBatches


class _Images(torch.utils.data.Dataset):
    """``count`` image records; reading those at ``unreadable`` raises as a corrupt file does, at ``refused`` as a
    record of another size does."""

    def __init__(self, count, unreadable=(), refused=()):
        self.count, self.unreadable, self.refused = count, set(unreadable), set(refused)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if index in self.unreadable:
            raise UnreadableImageError(f"cannot read image im{index}.png: image file is truncated")
        if index in self.refused:
            raise ValueError(f"image im{index}.png is 10x10 pixels (width x height) but the dataset gives width 20")
        return {"image_id": index}


def _loader(dataset, num_workers, batch_size=1):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                       collate_fn=lambda batch: batch)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_images_are_left_out_and_named_in_this_process_and_in_a_worker(num_workers):
    readable = ReadableBatches(_loader(_Images(6, unreadable=(1, 4)), num_workers))
    with logged_warnings(readable_batches.logger.name) as warnings:
        ids = [item["image_id"] for batch in readable for item in batch]
    assert ids == [0, 2, 3, 5] and len(readable) == 6
    assert warnings == [f"left out of the evaluation: cannot read image im{i}.png: image file is truncated"
                        for i in (1, 4)]
    assert readable.left_out_everywhere() == (
        "The metrics are over 4 of the 6 test images: 2 could not be read (each unreadable one is named in a warning "
        "above); the objects of those left out count as missed")


def test_a_batch_holding_an_unreadable_image_is_left_out_whole_and_counted():
    readable = ReadableBatches(_loader(_Images(5, unreadable=(2,)), num_workers=0, batch_size=2))
    assert [item["image_id"] for batch in readable for item in batch] == [0, 1, 4]
    assert readable.left_out_everywhere().startswith(
        "The metrics are over 3 of the 5 test images: 2 could not be read or shared a batch of 2 with one ")


def test_all_read_says_nothing_and_other_errors_stop_the_evaluation():
    readable = ReadableBatches(_loader(_Images(3), num_workers=0))
    assert len([batch for batch in readable]) == 3 and readable.left_out_everywhere() is None
    with pytest.raises(ValueError, match="im1.png is 10x10 pixels"):
        list(ReadableBatches(_loader(_Images(3, refused=(1,)), num_workers=1)))
    nothing = ReadableBatches(_loader(_Images(2, unreadable=(0, 1)), num_workers=0))
    assert list(nothing) == []
    with pytest.raises(ValueError, match=r"^no test image could be read \(2 unreadable, each named in a warning"):
        nothing.left_out_everywhere()


class _Stream(torch.utils.data.IterableDataset):
    """An iterable dataset whose third image is unreadable: the error ends its generator."""

    def __iter__(self):
        for index in range(5):
            if index == 2:
                raise UnreadableImageError(f"cannot read image im{index}.png: image file is truncated")
            yield {"image_id": index}


def test_an_unreadable_image_of_an_iterable_dataset_stops_the_evaluation():
    # going on would end the iteration there: the images after it dropped without a word
    with pytest.raises(UnreadableImageError, match="im2.png"):
        list(ReadableBatches(_loader(_Stream(), num_workers=0)))


def test_a_loader_without_a_dataset_counts_batches_left_out():
    class Batches:
        def __len__(self):
            return 3

        def __iter__(self):
            yield [{"image_id": 0}, {"image_id": 1}]
            raise UnreadableImageError("cannot read image im2.png: image file is truncated")

    readable = ReadableBatches(Batches())
    assert len(list(readable)) == 1
    assert readable.left_out_everywhere().startswith(
        "The metrics are over the 2 test images read: 1 batch(es) held an image that could not be read")


def test_the_processes_counts_are_summed(monkeypatch):
    gathered = []

    def all_gather(counts):
        gathered.append(counts)
        return [counts, (3, 0)]  # the other process read its 3 images

    monkeypatch.setattr(readable_batches.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(readable_batches.comm, "all_gather", all_gather)
    # each process's loader holds the whole test set and reads its share (here the first 4 of 7)
    share = torch.utils.data.DataLoader(_Images(7, unreadable=(0,)), sampler=range(4), collate_fn=lambda b: b)
    readable = ReadableBatches(share)
    list(readable)
    assert readable.left_out_everywhere().startswith("The metrics are over 6 of the 7 test images: 1 could not be read")
    assert gathered == [(3, 1)]


def test_eval_only_with_a_corrupt_test_image_scores_the_others_and_says_so(train_net, toy_dataset, tmp_path,
                                                                           capsys):
    from toy_detector import register_toy_dataset

    register_toy_dataset("focus_detr_toy_corrupt_test", str(tmp_path / "data"), bad_image=True)  # 8, the last bad
    out = tmp_path / "out"
    with logged_warnings(readable_batches.logger.name) as left_out, logged_warnings(evaluation.logger.name) as summary:
        code = train_net.cli(["--config-file", TOY_CONFIG, "--eval-only", "dataloader.test.dataset.names="
                              "focus_detr_toy_corrupt_test", f"train.output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert not shows_traceback(err)
    corrupt = tmp_path / "data" / "images" / "toy_007.png"
    assert left_out == [f"left out of the evaluation: cannot read image {corrupt}: UnidentifiedImageError: cannot "
                        f"identify image file '{corrupt}'"]
    assert summary[-1].startswith("The metrics are over 7 of the 8 test images: 1 could not be read")
    assert "AP" in json.loads((out / "eval_results.json").read_text())["bbox"]
