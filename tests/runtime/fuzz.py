"""Hostile frames for fuzz tests: random bytes, damaged encodings of real messages, oversized messages."""

from __future__ import annotations

import random

from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.messages import Message


def damaged(message: Message, rng: random.Random) -> list[bytes]:
    """An encoded message with bytes flipped, cut or inserted in one frame, or a frame dropped or added."""
    frames = [bytes(memoryview(f)) for f in encode(message)]
    index = rng.randrange(len(frames))
    frame = bytearray(frames[index])
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "cut", "insert", "drop_frame", "add_frame"])
        position = rng.randrange(max(len(frame), 1))
        if kind == "flip" and frame:
            frame[position] = rng.randrange(256)
        elif kind == "cut":
            del frame[position:]
        elif kind == "insert":
            frame[position:position] = rng.randbytes(rng.randint(1, 6))
        elif kind == "drop_frame" and len(frames) > 1:
            frames.pop()
            index = min(index, len(frames) - 1)
        elif kind == "add_frame":
            frames.append(rng.randbytes(rng.randint(0, 24)))
    frames[index] = bytes(frame)
    return frames


def hostile_frames(seeds: list[Message], rng: random.Random, count: int, max_message_bytes: int) -> list[list[bytes]]:
    """`count` messages: mostly damaged copies of `seeds`, some random bytes, one oversized in several frames."""
    out = [[rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 3))] for _ in range(count // 4)]
    out += [damaged(rng.choice(seeds), rng) for _ in range(count - len(out) - 1)]
    half = max_message_bytes // 2 + 1
    out.append([encode(seeds[0])[0], b"\0" * half, b"\0" * half])  # each frame fits; together too big
    rng.shuffle(out)
    return out


def num_malformed(frames: list[list[bytes]], max_message_bytes: int) -> int:
    """How many of these a receiver must count as malformed (undecodable or oversized)."""
    count = 0
    for message in frames:
        if sum(len(f) for f in message) > max_message_bytes:
            count += 1
            continue
        try:
            decode(message)
        except ProtocolError:
            count += 1
    return count
