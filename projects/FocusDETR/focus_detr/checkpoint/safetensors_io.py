"""Reading and writing the safetensors format (https://github.com/huggingface/safetensors): tensors only, so a file
cannot carry code by construction.

Layout: an 8-byte little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {str: str}}``, may end in spaces), then the tensors' raw little-endian bytes, offsets
counted from the end of the header. Every byte of the data belongs to exactly one tensor.

This reader checks every field of a stranger's file and names the problem and the tensor in one line (the
``safetensors`` package 0.8 says "invalid offset for tensor `b`" for overlapping tensors and for bytes between two,
"incomplete metadata, file not fully covered" for a truncated file and for bytes after the last tensor); the writer
writes each tensor's own bytes, also for tensors that share storage (the official detrex checkpoints' aliased heads),
which the package refuses ("Some tensors share memory"). Files of either are read by the other
(tests/checkpoint/test_safetensors.py).
"""
import json
import sys
from typing import BinaryIO, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch

__all__ = ["SAFETENSORS_DTYPES", "looks_like_safetensors", "read_safetensors", "write_safetensors"]

SAFETENSORS_DTYPES: Dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "I16": torch.int16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "F32": torch.float32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F64": torch.float64,
}
_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# The safetensors package's own limit: a header is a few hundred bytes per tensor.
MAX_HEADER_BYTES = 100_000_000
_MAX_DIM = 2**40
_METADATA_KEY = "__metadata__"
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


class _Entry(NamedTuple):
    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    begin: int
    end: int


def looks_like_safetensors(head: bytes) -> bool:
    """Whether a file's first 9 bytes start a safetensors file: a length, then the JSON header's ``{``. (Torch
    files start with a zip signature or a pickled magic number, model-zoo pickles with protocol and framing bytes;
    none of them has ``{`` as its 9th byte.)"""
    return len(head) >= 9 and head[8:9] == b"{"


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _brief(value) -> str:
    """``repr(value)``, cut to a length that fits an error line (a hostile header's names and values can be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(name: str, entry) -> _Entry:
    """One header entry -> _Entry; ValueError with the clause that says what is wrong."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
        what = f"fields {_brief(sorted(entry))}" if isinstance(entry, dict) else f"a {type(entry).__name__}"
        raise ValueError(f"header entry {_brief(name)} is not a tensor ({what}; a tensor has exactly "
                         "dtype, shape and data_offsets)")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {_brief(name)} has dtype {_brief(dtype)}, not one of {', '.join(SAFETENSORS_DTYPES)}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape):
        raise ValueError(f"tensor {_brief(name)} has shape {_brief(shape)}, not a list of sizes from 0 to 2^40")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {_brief(name)} has data_offsets {_brief(offsets)}, not [begin, end] with "
                         "0 <= begin <= end")
    torch_dtype = SAFETENSORS_DTYPES[dtype]
    numel = 1
    for size in shape:
        numel *= size
    needed = numel * torch_dtype.itemsize
    if needed != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {_brief(name)} ({dtype}, shape {_brief(shape)}) needs {needed} bytes but its "
                         f"data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return _Entry(name, torch_dtype, tuple(shape), offsets[0], offsets[1])


def _parse_header(raw: bytes, data_size: int) -> Tuple[List[_Entry], Dict[str, str]]:
    """The header's tensors, ordered by offset, after checking that they tile the ``data_size`` bytes of data, and
    its ``__metadata__`` map."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_without_duplicates)
    except _DuplicateKey as key:
        raise ValueError(f"its safetensors header names {_brief(str(key))} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"its safetensors header is not valid JSON ({type(error).__name__}: "
                         f"{str(error)[:100]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"its safetensors header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop(_METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"its safetensors {_METADATA_KEY} is not a map of strings to strings")
    entries = sorted((_parse_entry(name, entry) for name, entry in header.items()), key=lambda e: (e.begin, e.end))
    position, previous = 0, None
    for entry in entries:
        if entry.end > data_size:
            raise ValueError(f"tensor {_brief(entry.name)} lies at data bytes {entry.begin}..{entry.end}, past the "
                             f"{data_size} bytes after the header (the file is truncated or its header is wrong)")
        if entry.begin < position:
            raise ValueError(f"tensors {_brief(previous)} and {_brief(entry.name)} overlap "
                             f"(data bytes {entry.begin}..{position})")
        if entry.begin > position:
            raise ValueError(f"data bytes {position}..{entry.begin} belong to no tensor")
        position, previous = entry.end, entry.name
    if position != data_size:
        raise ValueError(f"the last {data_size - position} bytes of the file belong to no tensor")
    return entries, metadata


def read_safetensors(
    f: BinaryIO, file_size: int, unreadable: Callable[[str], Exception]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors of the safetensors file open as ``f`` (``file_size`` bytes), by name, in the file's order of
    offsets, and its header's ``__metadata__`` (str -> str; empty when it has none). Raises ``unreadable(why)`` (one
    clause) for anything that is not a well-formed file."""
    if sys.byteorder != "little":
        raise unreadable("safetensors files are read on little-endian machines only")
    f.seek(0)
    prefix = f.read(8)
    if len(prefix) < 8:
        raise unreadable(f"the file is truncated ({len(prefix)} bytes, less than a safetensors header length)")
    header_size = int.from_bytes(prefix, "little")
    if header_size > MAX_HEADER_BYTES:
        raise unreadable(f"its safetensors header length is {header_size} bytes, more than the format's limit of "
                         f"{MAX_HEADER_BYTES}")
    if 8 + header_size > file_size:
        raise unreadable(f"the file is truncated: its safetensors header length is {header_size} bytes but only "
                         f"{file_size - 8} follow")
    try:
        entries, metadata = _parse_header(f.read(header_size), file_size - 8 - header_size)
    except ValueError as error:
        raise unreadable(str(error)) from None
    tensors = {}
    for entry in entries:
        size = entry.end - entry.begin
        if size == 0:
            tensors[entry.name] = torch.empty(entry.shape, dtype=entry.dtype)
            continue
        # one buffer per tensor, so no tensor keeps the whole file alive; torch.frombuffer shares it, no copy
        buffer = bytearray(size)
        f.seek(8 + header_size + entry.begin)
        if f.readinto(buffer) != size:
            raise unreadable(f"the file is truncated (it ended inside tensor {_brief(entry.name)})")
        tensors[entry.name] = torch.frombuffer(buffer, dtype=entry.dtype).reshape(entry.shape)
    return tensors, metadata


def write_safetensors(f: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None):
    """Writes ``tensors`` (name -> tensor, any device) and ``metadata`` (str -> str) to the binary file ``f``.

    The tensors are laid out by decreasing item size, then name, and the data starts on an 8-byte boundary, so each
    tensor's bytes are aligned to its item size (as the ``safetensors`` package writes them).
    """
    if sys.byteorder != "little":
        raise ValueError("safetensors files are written on little-endian machines only")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"safetensors metadata must map strings to strings, got {_brief(metadata)}")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == _METADATA_KEY:
            raise ValueError(f"cannot write {_brief(name)} as a safetensors tensor name")
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _NAMES:
            what = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"cannot write {_brief(name)} to a safetensors file: {what} has no safetensors dtype")
    order = sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))
    header: Dict = {_METADATA_KEY: dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.dtype.itemsize
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for name in order:
        data = tensors[name].detach().cpu().contiguous().reshape(-1)
        f.write(data.view(torch.uint8).numpy().tobytes())
