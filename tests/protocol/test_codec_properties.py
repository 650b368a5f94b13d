"""Property tests of the wire codec: every message type round-trips, and no byte string decodes to
anything but a message or a ProtocolError (hypothesis)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.logprobs import Logprobs
from protocol.messages import ALL_MESSAGES, DTYPE_SIZES, Blob, Message

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.one_of(st.none(), st.booleans(), INT64, st.floats(allow_nan=False), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)


@st.composite
def blobs(draw: st.DrawFn) -> Blob:
    dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    return Blob(dtype, shape, draw(st.binary(min_size=DTYPE_SIZES[dtype] * math.prod(shape),
                                             max_size=DTYPE_SIZES[dtype] * math.prod(shape))))


@st.composite
def logprobs(draw: st.DrawFn) -> Logprobs:
    length, num_top = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    floats = st.floats(allow_nan=False)
    return Logprobs(draw(st.lists(INT64, min_size=length, max_size=length)),
                    draw(st.lists(floats, min_size=length, max_size=length)),
                    [draw(st.lists(INT64, min_size=num_top, max_size=num_top)) for _ in range(length)],
                    [draw(st.lists(floats, min_size=num_top, max_size=num_top)) for _ in range(length)])


def for_hint(hint: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else for_hint(a) for a in args))
    if origin is list:
        return st.lists(for_hint(args[0]), max_size=6)
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), VALUES, max_size=4)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(max_size=12), int: INT64, float: st.floats(allow_nan=False), bool: st.booleans(),
        Blob: blobs(), Logprobs: logprobs(), Any: VALUES}
    return simple[hint]


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: for_hint(hints[f.name]) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


MESSAGES = st.one_of(*(messages_of(cls) for cls in ALL_MESSAGES))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
def test_every_message_round_trips(message: Message) -> None:
    frames = [bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in encode(message)]
    assert decode(frames) == message


def decodes_or_protocol_error(frames: list[bytes]) -> None:
    try:
        decoded = decode(frames)
    except ProtocolError:
        return
    assert isinstance(decoded, Message)


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """An encoded message with its header or frames damaged: bytes flipped, cut, inserted, frames dropped/added."""
    frames = [bytes(memoryview(f)) for f in encode(draw(MESSAGES))]
    index = draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "drop_frame", "add_frame"]))
        position = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del frame[position:]
        elif kind == "insert":
            frame[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "drop_frame" and len(frames) > 1:
            frames.pop()
            index = min(index, len(frames) - 1)
        elif kind == "add_frame":
            frames.append(draw(st.binary(max_size=32)))
    frames[index] = bytes(frame)
    return frames


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    decodes_or_protocol_error(frames)


@settings(max_examples=150)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    decodes_or_protocol_error(frames)


BLOB_REFS = st.fixed_dictionaries({"__blob__": st.one_of(st.integers(-2, 3), VALUES),
                                   "dtype": st.one_of(st.sampled_from([*DTYPE_SIZES, "complex"]), VALUES),
                                   "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=3), VALUES)})


@settings(max_examples=250)
@given(st.data())
def test_wrong_fields_and_types_raise_only_protocol_error(data: st.DataObject) -> None:
    """The right tag, the type's own field names (some missing, some extra), any values, tensor refs anywhere."""
    cls = data.draw(st.sampled_from(ALL_MESSAGES))
    names = st.one_of(st.sampled_from([f.name for f in dataclasses.fields(cls)]), st.text(max_size=6))  # type: ignore[arg-type]
    header = data.draw(st.dictionaries(names, st.one_of(VALUES, BLOB_REFS), max_size=10))
    extra = data.draw(st.lists(st.binary(max_size=16), max_size=2))
    decodes_or_protocol_error([msgpack.packb({**header, "type": cls.TYPE}), *extra])
