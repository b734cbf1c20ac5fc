"""Counting the operators a run dispatches and the operations among them that stall the host on a GPU.

Every operator a model dispatches costs host time (Python, the dispatcher, on a GPU a kernel launch), and some force
the host to wait for the device: reading a value (``.item()``, ``bool()``, ``int()``, ``.tolist()``), operators whose
output shape depends on the data (``nonzero``, ``masked_select``, boolean-mask indexing, ``unique``,
``repeat_interleave`` without ``output_size``), copies between the host and the device, and tensors built from
Python data for the device (``torch.tensor(..., device=...)`` on a GPU is a blocking host-to-device copy; one built
without a device stays on the host and is not counted). Both are properties of the code, so they are counted on the
CPU as well (:func:`count_dispatch` / :func:`dispatch_counts`), where host and device are one memory: a CPU count
tells them apart as a GPU run would hold them. Host tensors are the run's inputs as the data loader delivers them
(``host_data``), tensors built without naming a device (from Python data, or by a factory such as ``torch.zeros``
given no tensor), what ``.cpu()`` returns, and whatever an operator computes from host tensors alone. Every other
tensor (the model's parameters and buffers, what is built on a named device or computed with a device tensor) is on
the device. So ``.to(<the device>)`` of a host tensor and ``copy_`` between the two count as copies (a no-op on the
CPU, a blocking copy from pageable memory on a GPU), and value reads and data-dependent operators on host tensors
do not count (they wait for no GPU). A device named as ``"cpu"`` in a CPU count is the device (unless torch's own
code names it: host memory, such as non-fused AdamW's ``step``): a tensor built or converted there
(``zeros_like(host, device=...)``, ``as_tensor(host, device=...)``, the latter a copy) is device data. A tensor built
before the counted call and not in ``host_data`` counts as device data: warm up under the same tracking
(:func:`dispatch_counts`'s ``warmup``).

A CPU count cannot see what a GPU run would do in these cases: ``torch.from_numpy`` (it does not pass
``__torch_function__``: its tensor counts as device data), ``host.type_as(device_tensor)`` (no copy counted; the
result counts as host data), a device name taken off a host tensor (``torch.zeros(2, device=host.device)`` is host
memory on a GPU, device data here), and ``bincount`` and ``torch.tensor`` of a list of device tensors (waits on a GPU,
not counted).

The operators are the ATen operators that reach the dispatcher's Python key (what a ``TorchDispatchMode`` sees:
composite operators such as ``linear`` appear as the operators they decompose into, views included).
"""
import collections
import contextlib
import dataclasses
import os
import sys
import traceback
from typing import Callable, Dict, Iterator, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["DispatchCounts", "count_dispatch", "dispatch_counts", "sync_reason", "tensors_in"]

_aten = torch.ops.aten

# Operators that wait for the device whatever their arguments: a value read on the host, or an output whose size
# is only known once the device has computed it.
_ALWAYS_SYNC = {
    _aten._local_scalar_dense.default: "reads a value on the host",
    _aten.equal.default: "reads a value on the host",
    _aten.nonzero.default: "data-dependent output size",
    _aten.masked_select.default: "data-dependent output size",
    _aten._unique.default: "data-dependent output size",
    _aten._unique2.default: "data-dependent output size",
    _aten.unique_dim.default: "data-dependent output size",
    _aten.unique_consecutive.default: "data-dependent output size",
}

_BOOLEAN_INDEXED = (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default)

# Tensor methods that hand data to Python or to the host without an operator the dispatcher sees on a CPU tensor
# (``tolist`` reads the memory directly, ``cpu`` of a CPU tensor returns it as is). ``numpy()`` is not one of them:
# it only takes a CPU tensor, so on a GPU the ``cpu()`` before it is the wait.
_HOST_CONVERSIONS = {
    torch.Tensor.tolist: "tensor -> Python list",
    torch.Tensor.cpu: "copy to the host",
}
# Tensors built from Python data: on a GPU, a blocking host-to-device copy. One built without a device (and no
# default device set) is a CPU tensor wherever the model runs: host data, not counted.
_FROM_PYTHON_DATA = (torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor)
_UPLOAD = "a tensor from Python data (a blocking host-to-device copy on a GPU)"


def tensors_in(tree) -> Iterator[torch.Tensor]:
    """The tensors of nested tuples, lists and dicts, in order."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from tensors_in(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from tensors_in(item)


def _tensors_held(tree, seen=None) -> Iterator[torch.Tensor]:
    """The tensors of nested tuples, lists, dicts and objects' attributes (a data loader's ``Instances`` and their
    ``Boxes``), each object visited once."""
    seen = set() if seen is None else seen
    if id(tree) in seen:
        return
    seen.add(id(tree))
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors_held(item, seen)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors_held(item, seen)
    elif hasattr(tree, "__dict__") and not isinstance(tree, type):
        yield from _tensors_held(vars(tree), seen)


def sync_reason(func, args, kwargs) -> Optional[str]:
    """Why the ATen operator ``func`` applied to ``args`` / ``kwargs`` makes the host wait for a GPU, or None."""
    if func in _ALWAYS_SYNC:
        return _ALWAYS_SYNC[func]
    if func in _BOOLEAN_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean-mask indexing (data-dependent size)"
        return None
    if func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size (data-dependent size)"
    if func is _aten._to_copy.default:
        device = kwargs.get("device")
        if device is not None and torch.device(device) != args[0].device:
            return "copy between devices"
        return None
    if func in (_aten.copy_.default, _aten.copy.default):
        if args[0].device != args[1].device:
            return "copy between devices"
    return None


@dataclasses.dataclass
class DispatchCounts:
    """What one counted run dispatched.

    Attributes:
        operators: ATen operators dispatched.
        syncs: operations among them (and host conversions such as ``.tolist()``) that make the host wait for a GPU.
        by_operator: operator name -> count.
        syncs_by_reason: ``"operator: reason"`` -> count.
        sync_sites: ``"file:line (function)"`` of the calling code -> count (only when counted with
            ``record_sites=True``).
    """

    operators: int = 0
    syncs: int = 0
    by_operator: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    syncs_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    sync_sites: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> Dict:
        return {
            "operators": self.operators,
            "syncs": self.syncs,
            "syncs_by_reason": dict(self.syncs_by_reason.most_common()),
            "sync_sites": dict(self.sync_sites.most_common()),
        }


_THIS_FILE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _calling_site() -> str:
    """The innermost frame outside torch and this file: where the model's code asked for the operation."""
    for frame in reversed(traceback.extract_stack()):
        filename = os.path.abspath(frame.filename)
        if filename != _THIS_FILE and not filename.startswith(_TORCH_DIR):
            return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return "<unknown>"


def _named_by_torch() -> bool:
    """Whether the code that called the operator being handled is torch's own (not the model's)."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) in (_THIS_FILE, _OVERRIDES_FILE):
        frame = frame.f_back
    return frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_TORCH_DIR)


_OVERRIDES_FILE = os.path.abspath(torch.overrides.__file__)


class _Recorder:
    def __init__(self, counts: DispatchCounts, device: torch.device, record_sites: bool, host_data=None):
        self.counts = counts
        self.device = device
        self.record_sites = record_sites
        self.in_conversion = 0
        self.silent = 0  # operators this module dispatches itself: not the run's
        # a CPU count: the tensors a GPU run would hold on the host (in a GPU run, their device says)
        self.host = WeakIdKeyDictionary() if device.type == "cpu" else None
        self.mark_host(host_data)

    def is_host(self, tensor) -> bool:
        if self.host is None:
            return tensor.device.type != self.device.type
        return tensor in self.host

    def mark_host(self, tree) -> None:
        if self.host is not None:
            for tensor in _tensors_held(tree):
                self.host[tensor] = True

    def on_device(self, args, kwargs) -> bool:
        """Whether the operation touches a tensor on the measured device (host data does not)."""
        tensors = list(tensors_in(args)) + list(tensors_in(kwargs))
        return not tensors or any(not self.is_host(t) for t in tensors)

    def alias(self, tensor: torch.Tensor) -> torch.Tensor:
        """A new tensor object for ``tensor``'s data: on the CPU ``.to`` and ``.cpu()`` return the tensor itself,
        which a GPU run would hold on the other side."""
        self.silent += 1
        try:
            return tensor.view_as(tensor)
        finally:
            self.silent -= 1

    def sync(self, name: str, reason: str) -> None:
        self.counts.syncs += 1
        self.counts.syncs_by_reason[f"{name}: {reason}"] += 1
        if self.record_sites:
            self.counts.sync_sites[_calling_site()] += 1


class _OperatorMode(TorchDispatchMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recorder = self.recorder
        if recorder.silent:
            return func(*args, **kwargs)
        recorder.counts.operators += 1
        recorder.counts.by_operator[str(func.overloadpacket)] += 1
        if not recorder.in_conversion:
            reason = sync_reason(func, args, kwargs)
            if reason is None and recorder.host is not None and func in (_aten.copy_.default, _aten.copy.default):
                if recorder.is_host(args[0]) != recorder.is_host(args[1]):
                    reason = "copy between devices"
            if reason is not None and (reason == "copy between devices" or recorder.on_device(args, kwargs)):
                recorder.sync(str(func.overloadpacket), reason)
        result = func(*args, **kwargs)
        if recorder.host is not None:
            tensors = list(tensors_in(args)) + list(tensors_in(kwargs))
            # built on a named device (zeros_like(host, device=...)): the device, as .to(device) is; _to_copy's
            # device comes from .to / type_as, which the function mode labels
            named = kwargs.get("device") is not None and func is not _aten._to_copy.default
            if tensors and not named and all(recorder.is_host(t) for t in tensors):  # computed on the host
                recorder.mark_host(result)
        return result


class _ConversionMode(TorchFunctionMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recorder = self.recorder
        if recorder.silent:
            return func(*args, **kwargs)
        if func in _FROM_PYTHON_DATA:
            return self._from_python_data(func, args, kwargs)
        if func is torch.Tensor.to and recorder.host is not None and recorder.is_host(args[0]):
            target = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            if target is not None and target.type == recorder.device.type:
                return self._to_the_device(func, args, kwargs)
        reason = _HOST_CONVERSIONS.get(func)
        if reason is None:
            result = func(*args, **kwargs)
            # built on the default device without a tensor to follow (torch.zeros(n), torch.arange(n)): the host
            if (recorder.host is not None and isinstance(result, torch.Tensor) and kwargs.get("device") is None
                    and torch.get_default_device().type == "cpu" and next(tensors_in((args, kwargs)), None) is None):
                recorder.mark_host(result)
            return result
        on_device = recorder.on_device(args, kwargs)
        if on_device:
            recorder.sync(f"Tensor.{func.__name__}", reason)
        # One sync for the whole conversion: the operators it dispatches (a copy, a value read) are not counted again.
        recorder.in_conversion += 1
        try:
            result = func(*args, **kwargs)
        finally:
            recorder.in_conversion -= 1
        if func is torch.Tensor.cpu and on_device and recorder.host is not None:
            result = recorder.alias(result) if result is args[0] else result
            recorder.mark_host(result)
        return result

    def _from_python_data(self, func, args, kwargs):
        recorder = self.recorder
        data = args[1] if func is torch.Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
        if kwargs.get("device") is not None:
            device = torch.device(kwargs["device"])
            # torch's own code names "cpu" only for host memory (non-fused AdamW's step), not the model's device
            on_host = device.type != recorder.device.type or (device.type == "cpu" and _named_by_torch())
        elif func is torch.Tensor.new_tensor:  # where the tensor it is called on is
            on_host = recorder.is_host(args[0])
        else:
            on_host = torch.get_default_device().type == "cpu"
        if isinstance(data, torch.Tensor) and kwargs.get("device") is not None and func is not torch.Tensor.new_tensor:
            if recorder.host is not None and recorder.is_host(data) and not on_host:  # as .to(device) of it
                return self._to_the_device(func, args, kwargs, f"torch.{func.__name__}")
        if not isinstance(data, torch.Tensor) and not on_host:
            owner = "Tensor" if func is torch.Tensor.new_tensor else "torch"
            recorder.sync(f"{owner}.{func.__name__}", _UPLOAD)
        result = func(*args, **kwargs)
        if on_host and not isinstance(data, torch.Tensor):
            recorder.mark_host(result)
        return result

    def _to_the_device(self, func, args, kwargs, name="Tensor.to"):
        """``host_tensor.to(<the measured device>, ...)`` (or ``torch.as_tensor(host_tensor, device=...)``) in a CPU
        count: the copy a GPU run makes."""
        recorder = self.recorder
        recorder.sync(name, "copy between devices (host data to the device)")
        recorder.in_conversion += 1
        try:
            result = func(*args, **kwargs)
        finally:
            recorder.in_conversion -= 1
        result = recorder.alias(result) if result is args[0] else result
        recorder.host.pop(result, None)  # a dtype change computed it from host data alone
        return result


@contextlib.contextmanager
def count_dispatch(device="cpu", record_sites: bool = False, host_data=None) -> Iterator[DispatchCounts]:
    """Counts, inside the ``with`` block, the operators dispatched and the host-device synchronisations.

    Args:
        device: where the measured model runs. A CPU run stands for a GPU one, its tensors told apart as host or
            device data by the module's rule; on a GPU, by their device. Value reads and data-dependent operators on
            host data are free and not counted.
        record_sites: also record, per synchronisation, the calling code's ``file:line`` (slower; for diagnosis).
        host_data: in a CPU count, the run's inputs as the data loader delivers them (dicts, lists, ``Instances``):
            host memory, whose moves to the device count as copies. None: its inputs count as device data.

    Yields the :class:`DispatchCounts`, filled in as the block runs (autograd's backward included).
    """
    recorder = _Recorder(DispatchCounts(), torch.device(device), record_sites, host_data)
    with _ConversionMode(recorder), _OperatorMode(recorder):
        yield recorder.counts


def dispatch_counts(function: Callable[[], object], device="cpu", record_sites: bool = False,
                    host_data=None, warmup: int = 0) -> DispatchCounts:
    """:class:`DispatchCounts` of one call of ``function()`` after ``warmup`` uncounted calls; ``host_data``: see
    :func:`count_dispatch`. The warm-up runs under the same host tracking, so what it builds (an optimizer's state,
    such as non-fused AdamW's ``step`` kept on the host) is labelled by the module's rule: a tensor built before the
    call and not in ``host_data`` counts as device data."""
    if warmup < 0:
        raise ValueError(f"need warmup >= 0, got {warmup}")
    recorder = _Recorder(DispatchCounts(), torch.device(device), False, host_data)
    with _ConversionMode(recorder), _OperatorMode(recorder):
        for _ in range(warmup):
            function()
        recorder.counts, recorder.record_sites = DispatchCounts(), record_sites
        function()
    return recorder.counts
