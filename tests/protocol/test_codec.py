"""Wire codec: round trips, zero-copy tensor frames, and every malformed input named."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest
import torch

from protocol.codec import decode, encode
from protocol.errors import ProtocolError
from protocol.logprobs import Logprobs
from protocol.messages import ALL_MESSAGES, Blob, Committed, Draft, Generate, Hello
from workers.tree import ROOT, DraftTree
from workers.wire import from_blob, to_blob, tree_blobs, tree_from_blobs


def test_round_trip_with_tensors() -> None:
    features = torch.randn(3, 8)
    message = Committed("r", 12, [4, 5, 6], 2, to_blob(features), 0.25)
    frames = encode(message)
    assert len(frames) == 2  # header + one tensor frame
    back = decode(frames)
    assert isinstance(back, Committed) and back.token_ids == [4, 5, 6] and back.epoch == 12
    assert back.features is not None and torch.equal(from_blob(back.features), features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_blob_dtypes(dtype: torch.dtype) -> None:
    tensor = (torch.randn(2, 5) * 10).to(dtype)
    back = decode(encode(Committed("r", 1, [1], 0, to_blob(tensor))))
    assert isinstance(back, Committed) and back.features is not None
    assert torch.equal(from_blob(back.features), tensor)


def test_tree_round_trip_and_validation() -> None:
    tree = DraftTree.from_lists([7, 8, 9], [ROOT, 0, 0], [0.5, 0.25, 0.125])
    draft = decode(encode(Draft("r", 5, 3, *tree_blobs(tree))))
    assert isinstance(draft, Draft)
    back = tree_from_blobs(draft.token_ids, draft.parents, draft.probs)
    assert torch.equal(back.token_ids, tree.token_ids) and torch.equal(back.parents, tree.parents)
    bad_parents = to_blob(torch.tensor([ROOT, 5, 0]))  # a parent after its child
    with pytest.raises(ValueError, match="parent"):
        tree_from_blobs(draft.token_ids, bad_parents, draft.probs)


def test_every_message_type_has_a_unique_tag() -> None:
    tags = [cls.TYPE for cls in ALL_MESSAGES]
    assert len(tags) == len(set(tags)) and all(tags)


@pytest.mark.parametrize("frames,reason", [
    ([b"\xc1"], "msgpack"),
    ([msgpack.packb([1, 2])], "map"),
    ([msgpack.packb({"type": "nope"})], "unknown message type"),
    ([msgpack.packb({"type": "cancel"})], "missing field 'request_id'"),
    ([msgpack.packb({"type": "cancel", "request_id": "r", "x": 1})], "unknown fields"),
    ([msgpack.packb({"type": "cancel", "request_id": 5})], "expected str"),
    ([msgpack.packb({"type": "generate", "request_id": "r", "prompt_ids": [1, "a"]})], "prompt_ids"),
    ([msgpack.packb({"type": "generate", "request_id": "r", "temperature": True})], "temperature"),
    ([msgpack.packb({"type": "committed", "request_id": "r", "epoch": 1, "token_ids": [], "tree_depth": 0,
                     "features": {"__blob__": 0, "dtype": "float32", "shape": [4]}})], "missing"),
    ([msgpack.packb({"type": "committed", "request_id": "r", "epoch": 1, "token_ids": [], "tree_depth": 0,
                     "features": {"__blob__": 0, "dtype": "float32", "shape": [4]}}), b"123"], "needs 16"),
    ([msgpack.packb({"type": "committed", "request_id": "r", "epoch": 1, "token_ids": [], "tree_depth": 0,
                     "features": {"__blob__": 0, "dtype": "complex", "shape": [1]}}), b"1234"], "dtype"),
    ([msgpack.packb({"type": "chunk", "request_id": "r", "token_ids": [], "text": "", "logprobs": [1]})],
     "Logprobs map"),
    ([msgpack.packb({"type": "chunk", "request_id": "r", "token_ids": [], "text": "",
                     "logprobs": {"token_ids": [1], "logprobs": [0.0], "top_ids": [[1]]}})], "missing field"),
    ([msgpack.packb({"type": "chunk", "request_id": "r", "token_ids": [], "text": "",
                     "logprobs": {"token_ids": [1], "logprobs": [0.0], "top_ids": [["a"]], "top_logprobs": [[0]]}})],
     "top_ids"),
    ([msgpack.packb({"type": "chunk", "request_id": "r", "token_ids": [], "text": "",
                     "logprobs": {"token_ids": [1, 2], "logprobs": [0.0], "top_ids": [], "top_logprobs": []}})],
     "differ in length"),
])
def test_malformed_input_is_named(frames: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(frames)


def test_blob_reuses_the_frame_buffer() -> None:
    tensor = torch.arange(6, dtype=torch.int64)
    blob = to_blob(tensor)
    frame = bytearray(memoryview(blob.data))
    decoded = decode([encode(Committed("r", 1, [1], 0, blob))[0], frame])
    assert isinstance(decoded, Committed) and decoded.features is not None
    view = from_blob(decoded.features)
    frame[0] = 42  # the tensor views the frame: no copy was made
    assert int(view[0]) == 42


def test_header_decodes_without_torch() -> None:
    code = ("import sys; from protocol.codec import decode, encode; from protocol.messages import Generate, Blob;"
            "m = decode(encode(Generate('r', prompt_ids=[1, 2]))); print('torch' in sys.modules, m.prompt_ids)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False [1, 2]"


def test_logprobs_round_trip_as_a_nested_record() -> None:
    logprobs = Logprobs([4, 9], [-0.5, -1.25], [[4, 7], [3, 9]], [[-0.5, -2.0], [-0.75, -1.25]])
    message = Committed("r", 3, [4, 9], 1, logprobs=logprobs, prompt_logprobs=Logprobs.empty())
    back = decode(encode(message))
    assert back == message and isinstance(back, Committed) and back.logprobs is not None
    assert back.logprobs.head(1) == Logprobs([4], [-0.5], [[4, 7]], [[-0.5, -2.0]])
    assert back.logprobs.top(1) == [(3, -0.75), (9, -1.25)]


def test_hello_round_trip() -> None:
    hello = Hello("w", "drafter", 1, "cpu", {"vocab_size": 5}, needs_features=True, pid=3)
    assert decode(encode(hello)) == hello
    assert decode(encode(Generate("r", prompt="hi", stop=["\n"]))) == Generate("r", prompt="hi", stop=["\n"])
    assert Blob("float32", (2, 2), b"0" * 16).num_bytes == 16
