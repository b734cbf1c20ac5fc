"""Reading and writing video files with OpenCV, refusing what cannot be read with one line, and writing atomically
(a complete file appears under its name, or nothing does)."""
import contextlib
import math
import os
import sys
import tempfile

import cv2
import numpy as np

from ..partial_files import PartialPath, remove_abandoned

__all__ = ["VIDEO_CODECS", "VideoWriter", "check_frame_rate", "open_video", "read_frames"]

# Output container (by file extension) -> the codec OpenCV's bundled FFmpeg writes it with.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def _quiet_ffmpeg():
    # FFmpeg's own log lines ("moov atom not found") would come next to the one line that reports the problem; it
    # reads this setting when OpenCV first uses it, so a process that read a video before keeps its logging.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@contextlib.contextmanager
def _native_messages_silenced():
    """OpenCV's own readers and FFmpeg's encoders print some complaints straight to the process's stderr ("Unexpected
    element. Expected: LIST", "timebase ... not supported"), past any log setting: they would come next to the one
    line that reports the problem. Silenced around the calls that open a file; what Python writes meanwhile too."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _stored_frame_rate(extension, fps):
    """The frame rate a one-frame file of ``extension`` written at ``fps`` reads back with (None: no writer opens)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe" + extension)
        with _native_messages_silenced():
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*VIDEO_CODECS[extension]), fps, (16, 16))
        if not writer.isOpened():
            return None
        writer.write(np.zeros((16, 16, 3), np.uint8))
        writer.release()
        capture = cv2.VideoCapture(path)
        stored = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else None
        capture.release()
        return stored


def check_frame_rate(path, fps):
    """ValueError (one line) unless a video written to ``path`` (by its extension) keeps the frame rate ``fps``:
    OpenCV's MJPG writer (.avi) stores a rate above 1,000 fps as 600 without a word, and its mp4v writer (.mp4) no
    rate beyond 65,535 or finer than a 65,535th. Tried on a one-frame file, before any frame is predicted."""
    extension = os.path.splitext(path)[1].lower()
    try:
        stored = _stored_frame_rate(extension, fps)
    except OSError:  # no temporary folder to try it in: the video is written as before
        return
    if stored is not None and abs(stored - fps) <= 1e-3 * fps:
        return
    others = [other for other in VIDEO_CODECS if other != extension
              and abs((_stored_frame_rate(other, fps) or -1.0) - fps) <= 1e-3 * fps]
    what = f"would store {stored:g} fps instead" if stored is not None else "cannot store it"
    hint = f"; a {others[0]} file keeps it" if others else ""
    raise ValueError(f"cannot write video {path} at the input's {fps:g} frames per second: OpenCV's "
                     f"{VIDEO_CODECS[extension]} writer {what}{hint}")


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
    with _native_messages_silenced():
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
            with _native_messages_silenced():
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
