"""Reading and writing video files with OpenCV, refusing what cannot be read with one line, and writing atomically
(a complete file appears under its name, or nothing does)."""
import math
import os

import cv2
import numpy as np

from ..partial_files import PartialPath, remove_abandoned

__all__ = ["VIDEO_CODECS", "VideoWriter", "open_video", "read_frames"]

# Output container (by file extension) -> the codec OpenCV's bundled FFmpeg writes it with.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def _quiet_ffmpeg():
    # FFmpeg's own log lines ("moov atom not found") would come next to the one line that reports the problem; it
    # reads this setting when OpenCV first uses it, so a process that read a video before keeps its logging.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def open_video(path):
    """Opens ``path`` for reading. Returns ``(capture, fps, frame_count)`` (``frame_count``: what the container
    announces, 0 when it does not say).

    Raises:
        FileNotFoundError / ValueError with one line: no such file, not a regular file, empty, or nothing OpenCV
        can decode (not a video, damaged), or no frame rate.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"cannot read video {path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read video {path}: an empty file (0 bytes)")
    _quiet_ffmpeg()
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"cannot read video {path}: OpenCV cannot decode it (not a video, or damaged)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not math.isfinite(fps) or fps <= 0:
        capture.release()
        raise ValueError(f"cannot read video {path}: it has no frame rate (damaged header?)")
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return capture, fps, int(count) if math.isfinite(count) and count > 0 else 0


def read_frames(capture):
    """The frames of an opened capture, BGR uint8 ``(H, W, 3)``, until the first that cannot be decoded."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


class VideoWriter:
    """Writes frames to ``path`` (``.mp4`` or ``.avi``, :data:`VIDEO_CODECS`) at ``fps``; the frame size is the
    first frame's. Frames go to a temporary file in the same folder, renamed to ``path`` by :meth:`close` once
    the file holds every frame written; a writer left by an exception removes it. Use as a context manager."""

    def __init__(self, path, fps):
        extension = os.path.splitext(path)[1].lower()
        if extension not in VIDEO_CODECS:
            raise ValueError(f"cannot write video {path}: the name must end in {' or '.join(VIDEO_CODECS)}")
        self.path, self.fps, self.count = path, fps, 0
        self._partial = None  # made at the first frame
        self._codec = cv2.VideoWriter_fourcc(*VIDEO_CODECS[extension])
        self._writer = None
        self._size = None

    def write(self, frame: np.ndarray):
        size = (frame.shape[1], frame.shape[0])
        if self._writer is None:
            folder, name = os.path.split(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            stem, extension = os.path.splitext(name)
            # a name of its own (not one per output): two runs writing one output must not write into one file
            remove_abandoned(folder, f".{stem}.", f".partial{extension}")  # killed runs' partial files
            self._partial = PartialPath(folder, prefix=f".{stem}.", suffix=f".partial{extension}")
            self._writer = cv2.VideoWriter(self._partial.path, self._codec, self.fps, size)
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.path}: OpenCV cannot open a {size[0]}x{size[1]} "
                              f"{VIDEO_CODECS[os.path.splitext(self.path)[1].lower()]} writer there")
            self._size = size
        if size != self._size:
            raise ValueError(f"cannot write video {self.path}: frame {self.count} is {size[0]}x{size[1]}, the "
                             f"first was {self._size[0]}x{self._size[1]}")
        self._writer.write(np.ascontiguousarray(frame))
        self.count += 1

    def close(self):
        """Finishes the file and renames it to ``path``. OSError when it does not hold the frames written."""
        if self._writer is None:
            raise ValueError(f"cannot write video {self.path}: no frame was written")
        self._writer.release()
        self._writer = None
        check = cv2.VideoCapture(self._partial.path)
        written = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if check.isOpened() else 0
        check.release()
        if written != self.count:
            self.discard()
            raise OSError(f"cannot write video {self.path}: the file holds {written} of the {self.count} frames "
                          "(disk full?)")
        try:
            os.replace(self._partial.path, self.path)
            self._partial.close()
        except OSError as error:  # e.g. a folder of that name: the frames are lost either way, the file must go
            self.discard()
            raise OSError(f"cannot write video {self.path}: {error.strerror}") from None

    def discard(self):
        """Stops writing and removes the temporary file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._partial is not None:
            self._partial.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        else:
            self.discard()
