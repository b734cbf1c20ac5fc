"""A test loader that leaves out the images it cannot read, so that one corrupt file does not cost a whole
evaluation."""
import logging

from detectron2.utils import comm
from torch.utils.data import IterableDataset

from ..data import UnreadableImageError
from .cli import one_line, raised_as

__all__ = ["ReadableBatches"]

logger = logging.getLogger(__name__)


def _length(dataset):
    try:
        return len(dataset)
    except TypeError:  # an iterable dataset without a length
        return None


class ReadableBatches:
    """Iterates a test loader (detectron2's ``inference_on_dataset`` takes it as the loader), leaving out each batch
    that holds an image the mapper cannot read (:class:`~focus_detr.data.UnreadableImageError`, in this process or a
    data-loading worker), with a warning naming it. Any other error stops the iteration, and so does an unreadable
    image of an iterable dataset, whose generator an error ends (going on would drop the rest without a word)."""

    def __init__(self, loader):
        self.loader = loader
        self.images = 0  # images yielded
        self.unreadable = 0  # batches left out

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.images = self.unreadable = 0
        resumable = not isinstance(getattr(self.loader, "dataset", None), IterableDataset)
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as error:
                if not (resumable and raised_as(error, UnreadableImageError)):
                    raise
                self.unreadable += 1
                logger.warning(f"left out of the evaluation: {one_line(error)}")
                continue
            self.images += len(batch)
            yield batch

    def left_out_everywhere(self):
        """None when every process read all its images; else one line (the same on every process) saying how many
        of the test set's images the metrics are without. A ValueError when no image at all could be read. A
        collective with several processes: every process calls it."""
        counts = [(self.images, self.unreadable)]
        if comm.get_world_size() > 1:
            counts = comm.all_gather(counts[0])
        images, unreadable = (sum(column) for column in zip(*counts))
        if not unreadable:
            return None
        if not images:
            raise ValueError(f"no test image could be read ({unreadable} unreadable, each named in a warning above)")
        missed = "the objects of those left out count as missed"
        total = _length(getattr(self.loader, "dataset", None))
        if total is None:
            return (f"The metrics are over the {images} test images read: {unreadable} batch(es) held an image that "
                    f"could not be read (each named in a warning above); {missed}")
        batch_size = getattr(self.loader, "batch_size", None) or 1
        shared = f" or shared a batch of {batch_size} with one" if batch_size > 1 else ""
        return (f"The metrics are over {images} of the {total} test images: {total - images} could not be read"
                f"{shared} (each unreadable one is named in a warning above); {missed}")
