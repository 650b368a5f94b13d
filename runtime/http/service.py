"""What the HTTP routes share: the coordinator's `AsyncClient`, the tokenizer, the chat template, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from protocol.errors import TandemError, WorkerDeadError
from protocol.messages import Chunk
from runtime.chat import ChatFormatter
from runtime.client import AsyncClient
from runtime.config import TandemConfig
from runtime.http.errors import ApiError, bad_field, from_tandem, no_verifier
from runtime.http.metrics import ServerMetrics
from runtime.results import GenerationParams

PROBE_TIMEOUT_S = 5.0  # how long /health and the admission check wait for the coordinator's metrics


class TandemService:
    def __init__(self, config: TandemConfig, client: AsyncClient, tokenizer: Any) -> None:
        server = config.server
        self.config, self.client, self.tokenizer = config, client, tokenizer
        self.model_name = (server.model_name if server else None) or os.path.basename(config.verifier.model)
        self.api_keys = frozenset(server.api_keys if server else ())
        self.chat = ChatFormatter(tokenizer, server.chat_template if server else None)
        self.metrics = ServerMetrics()

    async def coordinator_metrics(self) -> dict[str, Any]:
        """The coordinator's metrics dict; a coordinator that does not answer is a 503."""
        try:
            return await asyncio.wait_for(self.client.metrics(), PROBE_TIMEOUT_S)
        except (asyncio.TimeoutError, WorkerDeadError) as err:
            raise ApiError(503, f"the coordinator at {self.client.address} does not answer",
                           "service_unavailable", None, "coordinator_unavailable") from err

    async def check_ready(self) -> dict[str, Any]:
        """503 unless a verifier has joined (requests would only wait in the queue)."""
        metrics = await self.coordinator_metrics()
        if not any(w.get("role") == "verifier" for w in metrics.get("workers", [])):
            raise no_verifier()
        return metrics

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ApiError(404, f"model {model!r} does not exist; this server serves {self.model_name!r}",
                           "invalid_request_error", "model", "model_not_found")

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """Token ids as the coordinator would tokenize them, so usage counts are exact."""
        if not isinstance(prompt, str):
            return prompt
        if self.tokenizer is None:
            raise bad_field("prompt", "this model has no tokenizer: send the prompt as a list of token ids")
        return list(self.tokenizer(prompt)["input_ids"])

    def chat_prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        try:
            return self.chat.prompt_ids(messages)
        except TandemError as err:
            raise ApiError(400, str(err), "invalid_request_error", "messages", "bad_request") from err

    async def open_stream(self, prompt_ids: list[int],
                          params: GenerationParams) -> tuple[Chunk, AsyncGenerator[Chunk, None]]:
        """Submit a request and wait for its first chunk, so admission errors become HTTP statuses."""
        chunks = self._timed(self.client.stream(prompt_ids, params))
        try:
            first = await anext(chunks)
        except TandemError as err:
            await chunks.aclose()
            raise from_tandem(err) from err
        return first, chunks

    async def _timed(self, chunks: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
        """The chunks, observing time to first token and end-to-end latency; closing it cancels the request."""
        started, is_first = time.monotonic(), True
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if is_first and chunk.token_ids:
                    self.metrics.time_to_first_token.observe(time.monotonic() - started)
                    is_first = False
                if chunk.finish_reason is not None:
                    self.metrics.e2e_latency.observe(time.monotonic() - started)
                yield chunk
