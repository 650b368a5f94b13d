"""The whole pipeline in one process, without sockets: for notebooks and tests.

The coordinator and the worker handlers are the very objects the processes run; messages between
them still go through the wire codec, so in-process and distributed runs share every code path
but the sockets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from protocol.codec import decode, encode
from protocol.messages import Chunk, Error, Generate, GetMetrics, Heartbeat, Message, Metrics, Welcome
from runtime import builders
from runtime.chat import ChatFormatter
from runtime.config import TandemConfig
from runtime.coordinator import Coordinator
from runtime.results import GenerationOutput, GenerationParams, collect, error_to_exception

_CLIENT = b"engine-client"


class Engine:
    def __init__(self, coordinator: Coordinator, handlers: list[Any], chat_template: str | None = None) -> None:
        self.coordinator = coordinator
        self.chat_formatter = ChatFormatter(coordinator.tokenizer, chat_template)
        self.handlers = {h.worker_id.encode(): h for h in handlers}
        self._ids = itertools.count()
        self._inbox: list[Message] = []
        for identity, handler in self.handlers.items():
            coordinator.on_worker(identity, _wire(handler.hello()))
        self._pump()

    @classmethod
    def from_config(cls, path: str, chat_template: str | None = None) -> Engine:
        return cls.build(TandemConfig.load(path), chat_template)

    @classmethod
    def build(cls, config: TandemConfig, chat_template: str | None = None, calibrate: bool = True) -> Engine:
        """The deployment `config` describes, in this process (`calibrate=False`: the verifier's cost model
        stays unmeasured, so it verifies every node its sources offer: timing-free, reproducible τ)."""
        if chat_template is None and config.server is not None:
            chat_template = config.server.chat_template
        model = config.verifier.model
        coordinator = Coordinator(config, builders.load_tokenizer(model), builders.read_reference(model),
                                  builders.read_eos_ids(model))
        handlers = [builders.build_verifier_worker(config, "verifier-0", calibrate)]
        if config.uses_drafter:
            handlers.append(builders.build_drafter_worker(config, "drafter-0"))
        return cls(coordinator, handlers, chat_template)

    def generate(self, prompt_or_ids: str | list[int], params: GenerationParams | None = None,
                 **overrides: Any) -> GenerationOutput:
        return collect(self.stream(prompt_or_ids, params, **overrides))

    def chat(self, messages: list[dict[str, Any]], params: GenerationParams | None = None,
             **overrides: Any) -> GenerationOutput:
        """One assistant turn through the chat template (the coordinator's tokenizer)."""
        return self.generate(self.chat_formatter.prompt_ids(messages), params, **overrides)

    def stream(self, prompt_or_ids: str | list[int], params: GenerationParams | None = None,
               **overrides: Any) -> Iterator[Chunk]:
        request_id = f"engine-{next(self._ids)}"
        fields = GenerationParams.of(params, overrides).message_fields(prompt_or_ids)
        self.coordinator.on_client(_CLIENT, _wire(Generate(request_id, **fields)))
        num_open = max(fields["n"], 1)  # samples not finished yet
        while True:
            self._pump()
            mine = [m for m in self._inbox if getattr(m, "request_id", None) == request_id]
            self._inbox = [m for m in self._inbox if m not in mine]
            for message in mine:
                if isinstance(message, Error):
                    raise error_to_exception(message)
                if isinstance(message, Chunk):
                    yield message
                    num_open -= message.finish_reason is not None
                    if num_open == 0:
                        return
            if not mine and not self._step_workers():
                self.coordinator.tick()
                if not self.coordinator.outbox:
                    raise RuntimeError(f"request {request_id} made no progress (no worker can serve it)")

    def metrics(self) -> dict[str, Any]:
        for identity, handler in self.handlers.items():  # what heartbeats carry between processes
            self.coordinator.on_worker(identity, Heartbeat(handler.worker_id, handler.stats()))
        self.coordinator.on_client(_CLIENT, GetMetrics("metrics"))
        self._pump()
        found = [m for m in self._inbox if isinstance(m, Metrics)]
        self._inbox = [m for m in self._inbox if not isinstance(m, Metrics)]
        return found[-1].data

    def _pump(self) -> None:
        """Deliver every queued message until the system is quiet."""
        while self.coordinator.outbox:
            outbox, self.coordinator.outbox = self.coordinator.outbox, []
            for identity, message, to_client in outbox:
                if to_client:
                    self._inbox.append(_wire(message))
                elif identity in self.handlers and not isinstance(message, Welcome):
                    for reply in self.handlers[identity].handle(_wire(message)):
                        self.coordinator.on_worker(identity, _wire(reply))

    def _step_workers(self) -> bool:
        """Every worker with work takes one step (the verifier a verification, the drafter a growth step),
        as they would side by side in their processes; False when none had any."""
        stepped = False
        for identity, handler in self.handlers.items():
            if handler.has_work():
                stepped = True
                for reply in handler.step():
                    self.coordinator.on_worker(identity, _wire(reply))
        return stepped


def _wire(message: Message) -> Message:
    """Round-trip through the codec, as a socket would."""
    return decode(encode(message))
