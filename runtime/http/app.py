"""The FastAPI application: OpenAI routes (completions, chat, models), /health and /metrics.

Each route validates, asks `TandemService` for a stream of chunks and shapes them as OpenAI does;
errors of every kind leave as `{"error": {...}}` bodies with their status (runtime.http.errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from protocol.errors import TandemError
from runtime.http.errors import ApiError, from_tandem
from runtime.http.metrics import CONTENT_TYPE
from runtime.http.responses import Answer, Shape, sse
from runtime.http.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from runtime.http.service import Opened, TandemService, merged

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that hung up


def build_app(service: TandemService) -> FastAPI:
    app = FastAPI(title="Tandem", summary="OpenAI-compatible API of a Tandem deployment")
    _add_error_handlers(app)

    async def authorize(request: Request) -> None:
        """Every /v1 route (a dependency, not an HTTP middleware: that would hide a client's hang-up)."""
        if service.api_keys and not _has_key(request, service.api_keys):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", None, "invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check(service, body)
        prompts = body.prompts()
        prompt_ids = [service.prompt_ids(p) for p in prompts]
        echo = [service.prompt_text(p) for p in prompts] if body.echo else None
        answer = Answer(Shape(False, service.model_name), service.token_text, prompt_ids, body.n, body.num_logprobs,
                        echo, body.include_usage)
        return await _answer(service, request, answer, body)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        _check(service, body)
        answer = Answer(Shape(True, service.model_name), service.token_text, [service.chat_prompt_ids(body.messages)],
                        body.n, body.num_logprobs, include_usage=body.include_usage)
        return await _answer(service, request, answer, body)

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        model = {"id": service.model_name, "object": "model", "created": 0, "owned_by": "tandem",
                 "root": service.config.verifier.model, "max_model_len": service.config.limits.max_prompt_tokens
                 + service.config.limits.max_new_tokens}
        return {"object": "list", "data": [model]}

    app.include_router(v1)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        metrics = await service.check_ready()
        roles = [w.get("role") for w in metrics.get("workers", [])]
        return {"status": "ok", "workers": {role: roles.count(role) for role in ("verifier", "drafter")}}

    @app.get("/metrics")
    async def metrics() -> Response:
        snapshot = await service.coordinator_metrics()
        return Response(service.metrics.render(snapshot), media_type=CONTENT_TYPE)

    return app


def _check(service: TandemService, body: SamplingFields) -> None:
    body.check_supported()
    service.check_model(body.model)
    service.check_max_tokens(body.max_new_tokens, body.max_tokens_field)


async def _answer(service: TandemService, request: Request, answer: Answer, body: SamplingFields) -> Response:
    await service.check_ready()
    if body.stream:
        streams = await service.open_streams(answer.prompts, body.params(), body.field_names())
        return StreamingResponse(_events(answer, streams), media_type="text/event-stream")
    # a hang-up is watched for from submission on: while queued or prefilling, too
    collecting = asyncio.ensure_future(_collect(service, answer, body))
    hang_up = asyncio.ensure_future(_hang_up(request))
    await asyncio.wait({collecting, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    hang_up.cancel()
    if not collecting.done():  # the client hung up: cancel the request, as a stream's hang-up does
        collecting.cancel()  # inside the streams: each AsyncClient stream sends Cancel on its way out
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; logs show why
    try:
        collecting.result()
    except TandemError as err:
        raise from_tandem(err, body.field_names()) from err
    return JSONResponse(answer.response())


async def _hang_up(request: Request) -> None:
    """Returns when the client disconnects (the request's body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(service: TandemService, answer: Answer, body: SamplingFields) -> None:
    """A whole non-streamed answer: submit every prompt, then every chunk of every prompt into `answer`."""
    streams = await service.open_streams(answer.prompts, body.params(), body.field_names())
    async with contextlib.aclosing(merged(streams)) as chunks:
        async for prompt, chunk in chunks:
            answer.add(prompt, chunk)


async def _events(answer: Answer, streams: list[Opened]) -> AsyncIterator[str]:
    """Server-sent events ending in `data: [DONE]`; a client that hangs up cancels the request (the task is
    cancelled inside the streams, whose AsyncClient streams then send Cancel)."""
    try:
        async with contextlib.aclosing(merged(streams)) as chunks:
            async for prompt, chunk in chunks:
                for event in answer.add(prompt, chunk):
                    yield sse(event)
        if answer.include_usage:
            yield sse(answer.usage_chunk())
    except TandemError as err:  # after the first chunk the status is sent: the error goes in the stream
        yield sse(from_tandem(err).body())
    yield sse("[DONE]")


def _has_key(request: Request, keys: frozenset[str]) -> bool:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(key.strip(), k) for k in keys)


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc)

    @app.exception_handler(TandemError)
    async def tandem_error(request: Request, exc: TandemError) -> Response:
        return _error(from_tandem(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """Pydantic's complaint as a 400 naming the field (`param`), as OpenAI answers a bad field."""
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", exc))
        return _error(ApiError(400, message, "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(ApiError(exc.status_code, str(exc.detail), "invalid_request_error", None, None))
