"""Speculation on a virtual clock: the real coordinator, verifier and drafter handlers and the real models,
but every step lasts what a cost table says instead of what the wall clock says.

What async speculation gains depends on *when* trees and commits cross: which epoch the drafter's newest
tree was built on when the verifier starts, how many drafter steps fit in one verification. On a shared
2-core machine those timings are noise; here they are a fixed table (`Timing`, by default this machine's
cost picture), so a change of tree policy shows its effect on τ, re-root hits and idle time exactly and
repeatably, while every token is still computed by the real models (greedy output stays checkable).

Events: a worker that is idle handles every message it has received, then takes a step if it has work
(as `workers/process.py` does); the step's messages leave when its virtual duration ends; each hop
(worker -> coordinator -> worker or client) costs `hop_ms`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from protocol.codec import decode, encode
from protocol.messages import Chunk, Error, Generate, Heartbeat, Message, Welcome
from runtime.coordinator import Coordinator
from runtime.results import GenerationParams
from workers.batch_cost import BatchCost
from workers.cost_model import VerifyCost, interpolate


@dataclass(frozen=True)
class Timing:
    """Virtual durations (ms). Defaults: one core of the development machine with the demo target at
    context ~200 (docs/performance.md "Cost picture"): verification by nodes verified, a Falcon step."""

    verify_ms: tuple[tuple[int, float], ...] = ((0, 4.7), (8, 7.0), (16, 8.6), (32, 11.8), (64, 18.2))
    draft_step_ms: float = 2.4
    prefill_ms_per_token: float = 0.08
    hop_ms: float = 0.15  # one socket hop plus decoding
    # the Python around a forward (choose, learn, send) is inside these numbers; the coordinator costs nothing

    def verify_s(self, num_nodes: int) -> float:
        return interpolate(dict(self.verify_ms), max(num_nodes, 0))[max(num_nodes, 0)] / 1e3


class FixedBatchCost(BatchCost):
    """The verifier's cost model held to the virtual table: measurements of the real forward are ignored."""

    def __init__(self, max_width: int, timing: Timing) -> None:
        super().__init__(max_width)
        for width in range(1, max_width + 1):
            self.calibrate(1, width, timing.verify_s(width - 1))

    def observe(self, rows: int, width: int, context: int, seconds: float) -> None:
        pass


class FixedStepCost(VerifyCost):
    """The drafter's step cost held to the virtual step time."""

    def __init__(self, max_nodes: int, timing: Timing) -> None:
        super().__init__(max_nodes)
        self.cells = {VerifyCost.band(1): dict.fromkeys(range(1, max_nodes + 1), timing.draft_step_ms / 1e3)}
        for rows in range(1, 8):
            self.cells[VerifyCost.band(rows)] = dict(self.cells[VerifyCost.band(1)])

    def observe(self, num_nodes: int, context: int, seconds: float) -> None:
        pass


@dataclass
class _Worker:
    identity: bytes
    handler: Any
    inbox: list[Message] = field(default_factory=list)
    busy_until: float = 0.0
    busy_s: float = 0.0
    is_stepping: bool = False


@dataclass
class SimResult:
    outputs: list[list[int]]
    seconds: list[float]  # virtual seconds per request (submit to last chunk)
    metrics: dict[str, Any]
    drafter_busy_s: float
    verifier_busy_s: float

    @property
    def tokens_per_s(self) -> float:
        return sum(len(o) for o in self.outputs) / max(sum(self.seconds), 1e-9)


class Simulation:
    """One coordinator and its workers on a virtual clock; requests are submitted one at a time."""

    def __init__(self, coordinator: Coordinator, handlers: Sequence[Any], timing: Timing) -> None:
        self.timing = timing
        self.now = 0.0
        coordinator.clock = lambda: self.now
        self.coordinator = coordinator
        self.workers = {h.worker_id.encode(): _Worker(h.worker_id.encode(), h) for h in handlers}
        for worker in self.workers.values():
            if hasattr(worker.handler, "cost"):
                worker.handler.cost = FixedBatchCost(worker.handler.cost.max_width, timing)
            if hasattr(worker.handler, "step_cost"):
                worker.handler.step_cost = FixedStepCost(worker.handler.step_cost.max_nodes, timing)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._client: list[Message] = []
        for identity, worker in self.workers.items():
            coordinator.on_worker(identity, _wire(worker.handler.hello()))
        self._flush()
        self._run_until(lambda: False)

    def generate(self, token_ids: list[int], params: GenerationParams) -> tuple[list[int], float]:
        request_id = f"sim-{next(self._seq)}"
        start = self.now
        self.coordinator.on_client(b"sim", _wire(Generate(request_id, **params.message_fields(token_ids))))
        self._flush()
        out: list[int] = []
        done: list[bool] = []

        def finished() -> bool:
            for message in self._client:
                if isinstance(message, Error):
                    raise RuntimeError(f"{message.code}: {message.message}")
                if isinstance(message, Chunk) and message.request_id == request_id:
                    out.extend(message.token_ids)
                    if message.finish_reason is not None:
                        done.append(True)
            self._client.clear()
            return bool(done)

        self._run_until(finished)
        return out, self.now - start

    def _schedule(self, at: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), action))

    def _run_until(self, done: Callable[[], bool]) -> None:
        for worker in self.workers.values():
            self._kick(worker)
        while not done():
            if not self._events:
                if done():
                    return
                if any(w.handler.has_work() for w in self.workers.values()):
                    raise RuntimeError("a worker has work but nothing is scheduled")
                return
            at, _, action = heapq.heappop(self._events)
            self.now = max(self.now, at)
            action()

    def _flush(self) -> None:
        """The coordinator's outbox: to the client at once (it is in this process), to workers after a hop."""
        outbox, self.coordinator.outbox = self.coordinator.outbox, []
        for identity, message, to_client in outbox:
            if to_client:
                self._client.append(_wire(message))
            elif identity in self.workers and not isinstance(message, Welcome):
                self._schedule(self.now + self.timing.hop_ms / 1e3, partial(self._deliver, self.workers[identity],
                                                                            _wire(message)))

    def _deliver(self, worker: _Worker, message: Message) -> None:
        worker.inbox.append(message)
        self._kick(worker)

    def _to_coordinator(self, worker: _Worker, replies: list[Message]) -> None:
        for reply in replies:
            self._schedule(self.now + self.timing.hop_ms / 1e3, partial(self._arrive, worker, _wire(reply)))

    def _arrive(self, worker: _Worker, message: Message) -> None:
        self.coordinator.on_worker(worker.identity, message)
        self._flush()

    def _kick(self, worker: _Worker) -> None:
        """An idle worker handles what it has received, then steps if it has work."""
        if worker.is_stepping:
            return
        while worker.inbox:
            self._to_coordinator(worker, worker.handler.handle(worker.inbox.pop(0)))
        if not worker.handler.has_work():
            return
        before = _counts(worker.handler)
        replies = worker.handler.step()
        duration = self._duration(worker.handler, before, _counts(worker.handler))
        worker.is_stepping, worker.busy_s = True, worker.busy_s + duration

        def finish() -> None:
            worker.is_stepping = False
            self._to_coordinator(worker, replies)
            self._kick(worker)

        self._schedule(self.now + duration, finish)

    def _duration(self, handler: Any, before: dict[str, int], after: dict[str, int]) -> float:
        if handler.role == "drafter":
            return self.timing.draft_step_ms / 1e3
        nodes = after.get("num_nodes_verified", 0) - before.get("num_nodes_verified", 0)
        if after.get("num_verifications", 0) > before.get("num_verifications", 0):
            return self.timing.verify_s(nodes)
        tokens = after.get("prefill_tokens", 0) - before.get("prefill_tokens", 0)
        return self.timing.verify_s(0) + self.timing.prefill_ms_per_token * max(tokens, 0) / 1e3


def _counts(handler: Any) -> dict[str, int]:
    counters = dict(getattr(handler, "counters", {}))
    if handler.role == "verifier":
        counters["prefill_tokens"] = sum(r.prefill.done for r in handler.requests.values() if r.prefill is not None)
    return counters


def _wire(message: Message) -> Message:
    return decode(encode(message))


def simulate(config_path: str, prompts: Sequence[list[int]], max_new_tokens: int, timing: Timing | None = None,
             mode: str | None = None) -> SimResult:
    """Run `prompts` one after another through the config's deployment on the virtual clock."""
    import dataclasses

    from runtime import builders
    from runtime.config import TandemConfig

    config = TandemConfig.load(config_path)
    if mode is not None:
        config = dataclasses.replace(config, speculation=dataclasses.replace(config.speculation, mode=mode))
    timing = timing or Timing()
    model = config.verifier.model
    coordinator = Coordinator(config, builders.load_tokenizer(model), builders.read_reference(model),
                              builders.read_eos_ids(model))
    handlers = [builders.build_verifier_worker(config, "verifier-0", calibrate=False)]  # the table is the cost
    if config.uses_drafter:
        handlers.append(builders.build_drafter_worker(config, "drafter-0"))
    sim = Simulation(coordinator, handlers, timing)
    params = GenerationParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    outputs, seconds = [], []
    for prompt in prompts:
        out, elapsed = sim.generate(prompt, params)
        outputs.append(out)
        seconds.append(elapsed)
    for identity, worker in sim.workers.items():  # what heartbeats carry between processes
        coordinator.on_worker(identity, Heartbeat(worker.handler.worker_id, worker.handler.stats()))
    busy = {w.handler.role: w.busy_s for w in sim.workers.values()}
    return SimResult(outputs, seconds, coordinator.metrics_snapshot(), busy.get("drafter", 0.0),
                     busy.get("verifier", 0.0))
