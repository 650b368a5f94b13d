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
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from protocol.errors import ProtocolError
from protocol.messages import DTYPE_SIZES, MESSAGE_TYPES, Blob, Message

_BLOB_KEY = "__blob__"


def encode(message: Message) -> list[Any]:
    """Message -> frames: [header bytes, tensor buffers...]."""
    header: dict[str, Any] = {"type": message.TYPE}
    buffers: list[Any] = []
    for name in _schema(type(message)).names:
        value = getattr(message, name)
        if value is None or type(value) in _PLAIN:
            header[name] = value
        elif isinstance(value, Blob):
            header[name] = {_BLOB_KEY: len(buffers), "dtype": value.dtype, "shape": list(value.shape)}
            buffers.append(value.data)
        elif dataclasses.is_dataclass(value):  # a record of plain values (e.g. Logprobs): a map
            header[name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        else:
            header[name] = value
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
    schema = _schema(cls)
    extra = header.keys() - schema.name_set
    if extra:
        raise ProtocolError(f"{cls.TYPE}: unknown fields {sorted(extra)}")
    values: dict[str, Any] = {}
    for name, check in schema.checks:
        if name not in header:
            if name in schema.required:
                raise ProtocolError(f"{cls.TYPE}: missing field {name!r}")
            continue
        values[name] = check(cls.TYPE, name, header[name], frames)
    return cls(**values)


_PLAIN = frozenset({int, float, str, bool, bytes, list})  # sent as they are (a list holds plain values)
Check = Callable[[str, str, Any, Sequence[Any]], Any]  # (message type, field, value, frames) -> value


@dataclasses.dataclass(frozen=True)
class _Schema:
    """A message (or record) class's fields and one prepared check per field, built once per class."""

    names: tuple[str, ...]
    name_set: frozenset[str]
    required: frozenset[str]
    checks: tuple[tuple[str, Check], ...]


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        fields = dataclasses.fields(cls)
        hints = _hints(cls)
        names = tuple(f.name for f in fields)
        required = frozenset(f.name for f in fields
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        schema = _SCHEMAS[cls] = _Schema(names, frozenset(names), required,
                                         tuple((f.name, _checker(hints[f.name])) for f in fields))
    return schema


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


def _checker(hint: Any) -> Check:
    """The check of a field annotated `hint` (turning blob references into Blobs), prepared once per class:
    the annotation is read here, not for every value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = _checker(next(a for a in args if a is not type(None)))
        if type(None) not in args:
            return inner

        def optional(kind: str, name: str, value: Any, frames: Sequence[Any]) -> Any:
            return None if value is None else inner(kind, name, value, frames)
        return optional
    if hint is Blob:
        return _blob
    if dataclasses.is_dataclass(hint):
        return lambda kind, name, value, frames: _record(kind, name, value, hint)
    if hint is Any:
        return lambda kind, name, value, frames: value
    matches = _matcher(hint)

    def check(kind: str, name: str, value: Any, frames: Sequence[Any]) -> Any:
        if matches(value):
            return value
        raise ProtocolError(f"{kind}.{name}: expected {_name(hint)}, got {type(value).__name__} {value!r:.60}")
    return check


def _matcher(hint: Any) -> Callable[[Any], bool]:
    """Whether a plain value fits `hint` (int and float refuse bools; list[T] checks every element)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        inner = _matcher(args[0])
        return lambda value: isinstance(value, list) and all(inner(v) for v in value)
    if origin is dict:
        return lambda value: isinstance(value, dict)
    if hint is float:
        return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    return lambda value: isinstance(value, hint)


def _record(kind: str, name: str, value: Any, cls: Any) -> Any:
    """A nested record (a dataclass of plain values, sent as a map): every field checked, then built."""
    schema = _schema(cls)
    if not isinstance(value, dict) or value.keys() - schema.name_set:
        raise ProtocolError(f"{kind}.{name}: expected a {cls.__name__} map with fields {sorted(schema.names)}, "
                            f"got {value!r:.60}")
    missing = [n for n in schema.names if n in schema.required and n not in value]
    if missing:
        raise ProtocolError(f"{kind}.{name}: missing field {missing[0]!r}")
    checked = {n: check(kind, f"{name}.{n}", value[n], ()) for n, check in schema.checks if n in value}
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
