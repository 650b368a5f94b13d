"""The HTTP app in-process, over a scripted stand-in for `AsyncClient`: statuses, error bodies, parameters."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.errors import OverloadedError, RequestError, RequestTimeoutError, TandemError, WorkerDeadError
from protocol.logprobs import Logprobs
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
                                             ({"prompt": []}, "prompt"),
                                             ({"prompt": "x", "top_p": 0}, "top_p"),
                                             ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
                                             ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
                                             ({"prompt": "x", "logprobs": 21}, "logprobs"),
                                             ({"prompt": "x", "n": 2, "best_of": 3}, "best_of"),
                                             ({"prompt": "x", "n": 0}, "n"),
                                             ({"prompt": "x", "model": "other"}, "model"),
                                             ({}, "prompt")])
def test_bad_fields_are_named(http: TestClient, body: dict[str, Any], param: str) -> None:
    response = http.post("/v1/completions", json=body)
    assert response.status_code in (400, 404) and error_of(response)["param"] == param


@pytest.mark.parametrize(("body", "param"), [({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
                                             ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
                                             ({"max_tokens": 0}, "max_tokens")])
def test_bad_chat_fields_are_named(http: TestClient, body: dict[str, Any], param: str) -> None:
    response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body})
    assert response.status_code == 400 and error_of(response)["param"] == param


def test_a_coordinator_error_names_the_field_the_user_sent(http: TestClient, scripted: ScriptedClient) -> None:
    scripted.error = RequestError("max_new_tokens must be an integer in [1, 8], got 9", "max_new_tokens")
    response = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 9})
    assert response.status_code == 400 and error_of(response)["param"] == "max_tokens"


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


def logprobs_of(token_ids: list[int], base: float = -0.5) -> Logprobs:
    """Made-up logprobs: token t has base - t / 100; its alternatives are itself and token 3."""
    values = [base - t / 100 for t in token_ids]
    return Logprobs(token_ids, values, [[t, 3] for t in token_ids], [[v, v - 1] for v in values])  # 3: '!'


def test_completion_logprobs_with_echo(http: TestClient, scripted: ScriptedClient, tokenizer: Any) -> None:
    prompt_ids = tokenizer("def f():")["input_ids"]
    scripted.chunks = [Chunk("r", [7, 8], "ab", logprobs=logprobs_of([7, 8]),
                             prompt_logprobs=logprobs_of(prompt_ids[1:])),
                       Chunk("r", [9], "c", "length", STATS, logprobs=logprobs_of([9]))]
    response = http.post("/v1/completions", json={"prompt": "def f():", "echo": True, "logprobs": 2, "max_tokens": 3})
    assert response.status_code == 200
    assert scripted.calls[-1][1].logprobs == 2 and scripted.calls[-1][1].prompt_logprobs == 2
    choice = response.json()["choices"][0]
    assert choice["text"] == "def f():abc"
    logprobs = choice["logprobs"]
    ids = [*prompt_ids, 7, 8, 9]
    assert logprobs["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert logprobs["token_logprobs"] == [None, *logprobs_of(ids[1:]).logprobs]
    assert logprobs["top_logprobs"][0] is None
    assert logprobs["top_logprobs"][-1] == {tokenizer.decode([9]): -0.59, tokenizer.decode([3]): -0.59 - 1}
    assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(ids))]
    scoring = http.post("/v1/completions", json={"prompt": [5, 6, 7], "echo": True, "max_tokens": 0})
    assert scoring.status_code == 200 and scripted.calls[-1][1].prompt_logprobs == 0  # max_tokens 0 scores


def test_n_and_prompt_batches_make_choices_in_order(http: TestClient, scripted: ScriptedClient) -> None:
    scripted.chunks = [Chunk("r", [7], "a", index=1), Chunk("r", [8], "b", index=0),
                       Chunk("r", [9, 9], "cc", "length", STATS, index=1), Chunk("r", [], "", "stop", STATS, index=0)]
    response = http.post("/v1/completions", json={"prompt": [[5, 6], [7, 8, 9]], "n": 2, "seed": 1})
    assert response.status_code == 200 and scripted.calls[-1][1].n == 2
    out = response.json()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "b", "stop"), (1, "acc", "length"), (2, "b", "stop"), (3, "acc", "length")]
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    assert all(c["tandem"] == STATS for c in out["choices"])


def test_streamed_echo_waits_for_the_prompts_logprobs(http: TestClient, scripted: ScriptedClient) -> None:
    """Sample 1's chunk arrives first, but every choice starts with the prompt's logprobs that sample 0 brings."""
    scripted.chunks = [Chunk("r", [7], "a", "length", STATS, index=1, logprobs=logprobs_of([7])),
                       Chunk("r", [8], "b", "length", STATS, index=0, logprobs=logprobs_of([8]),
                             prompt_logprobs=logprobs_of([6]))]
    body = {"prompt": [5, 6], "n": 2, "echo": True, "logprobs": 1, "stream": True,
            "stream_options": {"include_usage": True}}
    response = http.post("/v1/completions", json=body)
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines()
              if line and line != "data: [DONE]"]
    assert [e["choices"][0]["index"] for e in events[:2]] == [0, 1]
    for event in events[:2]:
        assert event["choices"][0]["logprobs"]["token_logprobs"][:2] == [None, logprobs_of([6]).logprobs[0]]
    assert events[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_chat_logprobs_shape(scripted: ScriptedClient, tokenizer: Any) -> None:
    scripted.chunks = [Chunk("r", [7, 8], "ab", logprobs=logprobs_of([7, 8])),
                       Chunk("r", [9], "c", "length", STATS, logprobs=logprobs_of([9]))]
    body = {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2}
    with serve(scripted, tokenizer) as templated:
        response = templated.post("/v1/chat/completions", json=body)
        streamed = templated.post("/v1/chat/completions", json={**body, "stream": True})
    assert response.status_code == 200 and scripted.calls[-1][1].logprobs == 2
    content = response.json()["choices"][0]["logprobs"]["content"]
    token = tokenizer.decode([9])
    assert content[-1] == {"token": token, "logprob": -0.59, "bytes": list(token.encode()),
                           "top_logprobs": [{"token": token, "logprob": -0.59, "bytes": list(token.encode())},
                                            {"token": tokenizer.decode([3]), "logprob": -0.59 - 1,
                                             "bytes": list(tokenizer.decode([3]).encode())}]}
    events = [json.loads(line.removeprefix("data: ")) for line in streamed.text.splitlines()
              if line and line != "data: [DONE]"]
    assert [c for e in events for c in e["choices"][0]["logprobs"]["content"]] == content
