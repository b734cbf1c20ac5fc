"""What a path that exists but is neither a regular file nor a folder is: reading a named pipe waits for a writer
forever and a device such as /dev/zero never ends, so readers of users' files (checkpoints, COCO jsons) refuse them
before opening."""
import stat

__all__ = ["special_file_kind"]

_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file_kind(mode):
    """What a file of ``os.stat`` mode ``mode`` is ("a named pipe (FIFO)", "a character device", ...) when it is
    neither a regular file nor a folder, else None."""
    return next((kind for test, kind in _SPECIAL_FILES if test(mode)), None)
