"""Wire format: one msgpack header frame, then one raw frame per tensor (`Blob`).

Decoding checks everything a peer could get wrong (unknown type, missing or extra fields, wrong
field types, tensor frames whose size does not match dtype x shape) and raises ProtocolError. No
pickle, and no torch: a header decodes without touching tensor bytes, so the coordinator forwards
tensor frames untouched.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

import msgpack

from protocol.errors import ProtocolError
from protocol.messages import DTYPE_SIZES, MESSAGE_TYPES, Blob, Message

_BLOB_KEY = "__blob__"


def encode(message: Message) -> list[Any]:
    """Message -> frames: [header bytes, tensor buffers...]."""
    header: dict[str, Any] = {"type": message.TYPE}
    buffers: list[Any] = []
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if isinstance(value, Blob):
            header[f.name] = {_BLOB_KEY: len(buffers), "dtype": value.dtype, "shape": list(value.shape)}
            buffers.append(value.data)
        elif dataclasses.is_dataclass(value):  # a record of plain values (e.g. Logprobs): a map
            header[f.name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        else:
            header[f.name] = value
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def decode(frames: Sequence[Any]) -> Message:
    """Frames -> message; raises ProtocolError naming what is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    header = _unpack_header(frames[0])
    kind = header.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    extra = set(header) - set(fields)
    if extra:
        raise ProtocolError(f"{cls.TYPE}: unknown fields {sorted(extra)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in header:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
            continue
        values[name] = _check(cls.TYPE, name, header[name], hints[name], frames)
    return cls(**values)


def _unpack_header(frame: Any) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(bytes(frame), raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"header is not valid msgpack: {err}") from err
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    return header


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check(kind: str, name: str, value: Any, hint: Any, frames: Sequence[Any]) -> Any:
    """Validate one field against its annotation; turn blob references into Blobs."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Blob:
        return _blob(kind, name, value, frames)
    if dataclasses.is_dataclass(hint):
        return _record(kind, name, value, hint)
    if hint is Any or _matches(value, hint, origin, args):
        return value
    raise ProtocolError(f"{kind}.{name}: expected {_name(hint)}, got {type(value).__name__} {value!r:.60}")


def _matches(value: Any, hint: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    if origin is list:
        inner, inner_args = typing.get_origin(args[0]), typing.get_args(args[0])
        return isinstance(value, list) and all(_matches(v, args[0], inner, inner_args) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _record(kind: str, name: str, value: Any, cls: Any) -> Any:
    """A nested record (a dataclass of plain values, sent as a map): every field checked, then built."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(value, dict) or set(value) - set(fields):
        raise ProtocolError(f"{kind}.{name}: expected a {cls.__name__} map with fields {sorted(fields)}, "
                            f"got {value!r:.60}")
    hints = _hints(cls)
    missing = [n for n, f in fields.items() if n not in value and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ProtocolError(f"{kind}.{name}: missing field {missing[0]!r}")
    checked = {n: _check(kind, f"{name}.{n}", v, hints[n], ()) for n, v in value.items()}
    try:
        return cls(**checked)
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"{kind}.{name}: {err}") from err


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _blob(kind: str, name: str, ref: Any, frames: Sequence[Any]) -> Blob:
    if not isinstance(ref, dict) or set(ref) != {_BLOB_KEY, "dtype", "shape"}:
        raise ProtocolError(f"{kind}.{name}: expected a tensor reference, got {ref!r:.60}")
    index, dtype, shape = ref[_BLOB_KEY], ref["dtype"], ref["shape"]
    if dtype not in DTYPE_SIZES:
        raise ProtocolError(f"{kind}.{name}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(f"{kind}.{name}: bad shape {shape!r}")
    if not isinstance(index, int) or not 0 <= index < len(frames) - 1:
        raise ProtocolError(f"{kind}.{name}: tensor frame {index!r} is missing")
    data = frames[1 + index]
    blob = Blob(dtype, tuple(shape), getattr(data, "buffer", data))
    size = memoryview(blob.data).nbytes
    if size != blob.num_bytes:
        raise ProtocolError(f"{kind}.{name}: tensor frame has {size} bytes, {dtype}{shape} needs {blob.num_bytes}")
    return blob
