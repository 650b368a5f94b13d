"""Every message Tandem's processes exchange (DESIGN.md §8), as frozen dataclasses.

Fields are msgpack-able values or `Blob`s (tensors, sent as separate frames). Each message has a
type tag (`TYPE`); messages about a request carry its `request_id`, and those tied to an epoch carry
`epoch`, the committed length C they were built on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocol.logprobs import Logprobs

PROTOCOL_VERSION = 3  # 2: the verifier drives its requests (Prefill run settings, Steer); 3: logprobs, n

DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class Blob:
    """A tensor on the wire: dtype name, shape, and its raw bytes (any buffer; travels as its own frame)."""

    dtype: str
    shape: tuple[int, ...]
    data: Any

    @property
    def num_bytes(self) -> int:
        return DTYPE_SIZES[self.dtype] * math.prod(self.shape)


class Message:
    """Base of all messages; `TYPE` is the wire tag."""

    TYPE: ClassVar[str] = ""


# ---- handshake and liveness -------------------------------------------------------------------

@dataclass(frozen=True)
class Hello(Message):
    """Worker -> coordinator, first message: who I am and what model I hold."""

    TYPE: ClassVar[str] = "hello"
    worker_id: str
    role: str  # "verifier" | "drafter"
    protocol_version: int
    device: str
    fingerprint: dict[str, Any]  # vocab_size, hidden_size, tokenizer_hash, model
    needs_features: bool = False
    pid: int = 0


@dataclass(frozen=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    worker_id: str
    mode: str  # async | sync | off


@dataclass(frozen=True)
class Refused(Message):
    TYPE: ClassVar[str] = "refused"
    worker_id: str
    reason: str


@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    worker_id: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Shutdown(Message):
    TYPE: ClassVar[str] = "shutdown"
    reason: str = ""


# ---- client-facing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Generate(Message):
    TYPE: ClassVar[str] = "generate"
    request_id: str
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1  # samples of this prompt, each its own request (index 0 .. n-1) with its own seed stream
    logprobs: int | None = None  # per generated token: its log-probability and the N most likely (None: off)
    prompt_logprobs: int | None = None  # the same for the prompt's tokens, from the prefill (None: off)


@dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "cancel"
    request_id: str


@dataclass(frozen=True)
class GetMetrics(Message):
    TYPE: ClassVar[str] = "get_metrics"
    request_id: str


@dataclass(frozen=True)
class Metrics(Message):
    TYPE: ClassVar[str] = "metrics"
    request_id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Chunk(Message):
    """New tokens of one sample of a request; its last chunk has a finish reason and its stats."""

    TYPE: ClassVar[str] = "chunk"
    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # stop | length | cancelled
    stats: dict[str, Any] | None = None
    index: int = 0  # which sample (0 .. n-1) of the request
    logprobs: Logprobs | None = None  # of `token_ids`, when the request asked
    prompt_logprobs: Logprobs | None = None  # of the prompt's tokens but the first, in sample 0's first chunk


@dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    request_id: str | None
    code: str  # bad_request | overloaded | timeout | model_mismatch | internal
    message: str
    param: str | None = None  # the request field at fault (a bad_request), as the Generate message names it


# ---- worker-facing -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Prefill(Message):
    """Coordinator -> verifier: (re)build a request's cache from its committed tokens, then run it.

    With `sample_next` the verifier caches every token and samples the next one (a new request);
    without, the last token is the root: it caches the others and commits nothing new (a resync after
    a worker restart). Either way it then verifies the request on its own, one verification after
    another (`mode`), until `max_length` committed tokens, a token of `stop_token_ids`, or `Release`.
    """

    TYPE: ClassVar[str] = "prefill"
    request_id: str
    epoch: int
    token_ids: list[int]
    sampling: dict[str, Any]  # temperature, top_p, top_k, seed
    sample_next: bool = True
    want_features: bool = False  # send the target's features with every commit (a Falcon drafter reads them)
    max_tree_nodes: int = 0  # most nodes one verification may check (0 = no tree)
    mode: str = "off"  # async: verify the newest tree held, never wait | sync: wait for a fresh draft | off
    max_length: int = 0  # stop after this many committed tokens (0 = the model's context)
    stop_token_ids: list[int] = field(default_factory=list)  # stop after committing one of these
    num_logprobs: int | None = None  # send every committed token's log-probability and N alternatives
    num_prompt_logprobs: int | None = None  # send the prompt's log-probabilities with the first commit
    prefix_from: str = ""  # a request held here with the same prompt (a sibling sample): copy its cache


@dataclass(frozen=True)
class Steer(Message):
    """Coordinator -> verifier: the request's drafter changed (lost, joined, replaced).

    `send_features` asks for the features of every committed position but the root, once (a drafter
    that reads features is taking the request over): the verifier answers with a `Committed` with no
    tokens at its current epoch.
    """

    TYPE: ClassVar[str] = "steer"
    request_id: str
    mode: str  # async | sync | off, as in Prefill
    want_features: bool = False
    send_features: bool = False


@dataclass(frozen=True)
class Draft(Message):
    """Drafter -> coordinator -> verifier: the living tree below the root x[C-1], built on epoch C.

    The verifier keeps the newest tree per request; one built on an older epoch is re-rooted along the
    tokens committed since (or dropped when it does not contain them).
    """

    TYPE: ClassVar[str] = "draft"
    request_id: str
    epoch: int
    root: int
    token_ids: Blob  # [N] int64
    parents: Blob  # [N] int64, -1 = root; parents before children
    probs: Blob  # [N] float32


@dataclass(frozen=True)
class Committed(Message):
    """Verifier -> coordinator: the result of a prefill or a verification at epoch C."""

    TYPE: ClassVar[str] = "committed"
    request_id: str
    epoch: int
    token_ids: list[int]  # accepted nodes' tokens then the bonus token (empty for a resync / feature resend)
    tree_depth: int  # depth of the verified tree
    features: Blob | None = None  # [len(token_ids), H] for verify; [C-1, H] for prefill and feature resends
    compute_s: float = 0.0  # verifier time spent on this result
    num_nodes: int = 0  # draft nodes verified
    reroot_hit: bool = False  # the tree the verifier held spelled every token committed here
    logprobs: Logprobs | None = None  # of `token_ids`, when the Prefill asked (num_logprobs)
    prompt_logprobs: Logprobs | None = None  # of the prompt's tokens but the first, with the prefill's commit
    off_top: bool = False  # speculation.target_candidates: a candidate other than the target's choice was taken


@dataclass(frozen=True)
class Open(Message):
    """Coordinator -> drafter: start (or restart) drafting for a request."""

    TYPE: ClassVar[str] = "open"
    request_id: str
    epoch: int
    committed_ids: list[int]
    features: Blob | None = None  # [C-1, H] when the drafter reads features


@dataclass(frozen=True)
class Commit(Message):
    """Coordinator -> drafter: tokens committed at the old epoch; answer with a Draft for `epoch`."""

    TYPE: ClassVar[str] = "commit"
    request_id: str
    epoch: int  # the new committed length
    token_ids: list[int]
    features: Blob | None = None


@dataclass(frozen=True)
class Release(Message):
    TYPE: ClassVar[str] = "release"
    request_id: str


@dataclass(frozen=True)
class Failed(Message):
    """Worker -> coordinator: a message about this request could not be handled."""

    TYPE: ClassVar[str] = "failed"
    request_id: str
    code: str
    message: str


ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello, Welcome, Refused, Heartbeat, Shutdown, Generate, Cancel, GetMetrics, Metrics, Chunk, Error,
    Prefill, Steer, Draft, Committed, Open, Commit, Release, Failed)
MESSAGE_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in ALL_MESSAGES}
