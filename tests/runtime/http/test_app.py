"""The HTTP app in-process, over a scripted stand-in for `AsyncClient`: statuses, error bodies, parameters."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.errors import OverloadedError, RequestTimeoutError, TandemError, WorkerDeadError
from protocol.messages import Chunk
from runtime.builders import load_tokenizer
from runtime.config import DEFAULT_CONFIG_PATH, TandemConfig
from runtime.http.app import build_app
from runtime.http.service import TandemService
from runtime.results import GenerationParams

STATS = {"tau": 2.0, "num_verifications": 1, "accepted_per_depth": [1]}


class ScriptedClient:
    """Answers metrics with `workers`; a stream yields `chunks`, raising `error` after `error_after` of them."""

    address = "tcp://scripted:1"

    def __init__(self) -> None:
        self.workers: list[dict[str, Any]] = [{"role": "verifier", "num_requests": 0}]
        self.is_silent = False
        self.chunks = [Chunk("r", [7, 8], "ab"), Chunk("r", [9], "c", "length", STATS)]
        self.error: TandemError | None = None
        self.error_after = 0
        self.calls: list[tuple[list[int], GenerationParams]] = []

    async def metrics(self) -> dict[str, Any]:
        if self.is_silent:
            raise WorkerDeadError("no answer from the coordinator")
        return {"workers": self.workers, "num_active": 0, "num_queued": 0}

    async def stream(self, prompt_ids: list[int], params: GenerationParams) -> AsyncGenerator[Chunk, None]:
        self.calls.append((prompt_ids, params))
        for i, chunk in enumerate(self.chunks):
            if self.error is not None and i == self.error_after:
                raise self.error
            yield chunk


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(TandemConfig.load(DEFAULT_CONFIG_PATH).verifier.model)


@pytest.fixture
def scripted() -> ScriptedClient:
    return ScriptedClient()


def serve(scripted: ScriptedClient, tokenizer: Any, *overrides: str) -> TestClient:
    config = TandemConfig.load(DEFAULT_CONFIG_PATH, ["server.model_name=m", *overrides])
    return TestClient(build_app(TandemService(config, scripted, tokenizer)))  # type: ignore[arg-type]


@pytest.fixture
def http(scripted: ScriptedClient, tokenizer: Any) -> Iterator[TestClient]:
    with serve(scripted, tokenizer, "server.chat_template=") as client:  # the demo tokenizer's own: none
        yield client


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_health_needs_a_verifier_and_an_answering_coordinator(http: TestClient, scripted: ScriptedClient) -> None:
    assert http.get("/health").status_code == 200
    scripted.workers = [{"role": "drafter"}]
    response = http.get("/health")
    assert response.status_code == 503 and error_of(response)["code"] == "no_workers"
    assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 503
    scripted.is_silent = True
    response = http.get("/health")
    assert response.status_code == 503 and error_of(response)["code"] == "coordinator_unavailable"


@pytest.mark.parametrize(("error", "status", "code"), [(OverloadedError("full"), 429, "overloaded"),
                                                       (RequestTimeoutError("late"), 504, "timeout")])
def test_errors_before_the_first_chunk_are_statuses(http: TestClient, scripted: ScriptedClient, error: TandemError,
                                                   status: int, code: str) -> None:
    scripted.error = error
    for stream in (False, True):
        response = http.post("/v1/completions", json={"prompt": "x", "stream": stream})
        assert response.status_code == status and error_of(response)["code"] == code


def test_an_error_mid_stream_is_an_event_before_done(http: TestClient, scripted: ScriptedClient) -> None:
    scripted.error, scripted.error_after = RequestTimeoutError("late"), 1
    response = http.post("/v1/completions", json={"prompt": "x", "stream": True})
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["text"] == "ab"
    assert json.loads(events[1])["error"]["code"] == "timeout"


def test_fields_become_generation_params(http: TestClient, scripted: ScriptedClient, tokenizer: Any) -> None:
    body = {"prompt": "def f():", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "\n",
            "top_k": -1, "stop_token_ids": [4], "ignore_eos": True, "user": "ignored"}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200
    prompt_ids, params = scripted.calls[-1]
    assert prompt_ids == tokenizer("def f():")["input_ids"]
    assert params == GenerationParams(max_new_tokens=5, temperature=0.5, top_p=0.9, top_k=0, seed=3, stop=("\n",),
                                      stop_token_ids=(4,), ignore_eos=True)
    out = response.json()
    assert out["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "length", "text": "abc"}
    assert out["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 3,
                            "total_tokens": len(prompt_ids) + 3}
    assert out["tandem"] == STATS and out["model"] == "m"
    assert http.post("/v1/completions", json={"prompt": [5, 6, 7]}).status_code == 200
    assert scripted.calls[-1][0] == [5, 6, 7]


@pytest.mark.parametrize(("body", "param"), [({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
                                             ({"prompt": ["a", "b"]}, "prompt"),
                                             ({"prompt": "x", "top_p": 0}, "top_p"),
                                             ({"prompt": "x", "echo": True}, "echo"),
                                             ({"prompt": "x", "model": "other"}, "model"),
                                             ({}, "prompt")])
def test_bad_fields_are_named(http: TestClient, body: dict[str, Any], param: str) -> None:
    response = http.post("/v1/completions", json=body)
    assert response.status_code in (400, 404) and error_of(response)["param"] == param


def test_chat_uses_the_configured_template_and_needs_one(http: TestClient, scripted: ScriptedClient,
                                                         tokenizer: Any) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and "server.chat_template" in error_of(response)["message"]
    with serve(scripted, tokenizer) as templated:  # configs/demo.yaml names configs/chat_template.jinja
        response = templated.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"] == {"role": "assistant", "content": "abc"}
    prompt_ids, params = scripted.calls[-1]
    assert prompt_ids == tokenizer("### user:\nhi\n\n### assistant:\n", add_special_tokens=False)["input_ids"]
    assert params.max_new_tokens == 4
