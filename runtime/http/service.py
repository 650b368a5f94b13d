"""What the HTTP routes share: the coordinator's `AsyncClient`, the tokenizer, the chat template, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator
from typing import Any, TypeAlias

from protocol.errors import TandemError, WorkerDeadError
from protocol.messages import Chunk
from runtime.chat import ChatFormatter
from runtime.client import AsyncClient
from runtime.config import TandemConfig
from runtime.http.errors import ApiError, bad_field, from_tandem, no_verifier
from runtime.http.logprobs import TokenText
from runtime.http.metrics import ServerMetrics
from runtime.results import GenerationParams

PROBE_TIMEOUT_S = 5.0  # how long /health and the admission check wait for the coordinator's metrics
Opened: TypeAlias = tuple[Chunk, AsyncGenerator[Chunk, None]]  # a request's first chunk and the rest


class TandemService:
    def __init__(self, config: TandemConfig, client: AsyncClient, tokenizer: Any) -> None:
        server = config.server
        self.config, self.client, self.tokenizer = config, client, tokenizer
        self.model_name = (server.model_name if server else None) or os.path.basename(config.verifier.model)
        self.api_keys = frozenset(server.api_keys if server else ())
        self.chat = ChatFormatter(tokenizer, server.chat_template if server else None)
        self.metrics = ServerMetrics()
        self.token_text = TokenText(tokenizer)

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

    def check_max_tokens(self, max_new_tokens: int | None, field: str) -> None:
        limit = self.config.limits.max_new_tokens
        if max_new_tokens is not None and max_new_tokens > limit:
            raise bad_field(field, f"{field} must be at most {limit} (limits.max_new_tokens), got {max_new_tokens}")

    def prompt_text(self, prompt: str | list[int]) -> str:
        """A prompt as text (echo): as sent, or its token ids decoded."""
        if isinstance(prompt, str):
            return prompt
        return "" if self.tokenizer is None else str(self.tokenizer.decode(prompt))

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

    async def open_streams(self, prompts: list[list[int]], params: GenerationParams,
                           names: dict[str, str]) -> list[Opened]:
        """Submit one request per prompt (at once) and wait for each first chunk, so admission errors become
        HTTP statuses; `names` maps a `Generate` field an error names to the field the user sent."""
        opening = [asyncio.ensure_future(self._open(ids, params)) for ids in prompts]
        try:
            await asyncio.wait(opening)
        except asyncio.CancelledError:  # the client hung up: every request is cancelled
            for task in opening:
                task.cancel()  # one still opening: its stream's own cleanup sends Cancel
            for task in opening:
                if task.done() and not task.cancelled() and task.exception() is None:
                    await task.result()[1].aclose()  # one opened already: closing its stream sends Cancel
            raise
        failed = next((task.exception() for task in opening if task.exception() is not None), None)
        if failed is None:
            return [task.result() for task in opening]
        for task in opening:  # one prompt refused: the request is refused, the others are cancelled
            if task.exception() is None:
                await task.result()[1].aclose()
        if isinstance(failed, TandemError):
            raise from_tandem(failed, names) from failed
        raise failed

    async def _open(self, prompt_ids: list[int], params: GenerationParams) -> Opened:
        chunks = self._timed(self.client.stream(prompt_ids, params), params.n)
        try:
            first = await anext(chunks)
        except TandemError:
            await chunks.aclose()
            raise
        return first, chunks

    async def _timed(self, chunks: AsyncGenerator[Chunk, None], num_samples: int) -> AsyncGenerator[Chunk, None]:
        """The chunks, observing time to first token and end-to-end latency (once every sample has finished);
        closing it cancels the request."""
        started, is_first, num_open = time.monotonic(), True, num_samples
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if is_first and chunk.token_ids:
                    self.metrics.time_to_first_token.observe(time.monotonic() - started)
                    is_first = False
                num_open -= chunk.finish_reason is not None
                if chunk.finish_reason is not None and num_open == 0:
                    self.metrics.e2e_latency.observe(time.monotonic() - started)
                yield chunk


async def merged(streams: list[Opened]) -> AsyncGenerator[tuple[int, Chunk], None]:
    """(prompt index, chunk) of several requests as they arrive: each first chunk, then the rest interleaved.

    Closing it (or cancelling its consumer) closes every request's stream, which cancels the request."""
    for index, (first, _) in enumerate(streams):
        yield index, first
    queue: asyncio.Queue[tuple[int, Chunk | None, Exception | None]] = asyncio.Queue()

    async def pump(index: int, chunks: AsyncGenerator[Chunk, None]) -> None:
        try:
            async for chunk in chunks:
                await queue.put((index, chunk, None))
            await queue.put((index, None, None))
        except Exception as err:  # handed to the consumer, which raises it
            await queue.put((index, None, err))

    tasks = [asyncio.ensure_future(pump(i, chunks)) for i, (_, chunks) in enumerate(streams)]
    try:
        num_open = len(tasks)
        while num_open:
            index, chunk, err = await queue.get()
            if err is not None:
                raise err
            if chunk is None:
                num_open -= 1
            else:
                yield index, chunk
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, chunks in streams:
            await chunks.aclose()
