"""End to end: a deployment on the demo target (ngram drafter) with its HTTP server, driven by the official
`openai` SDK, compared with the ZeroMQ `Client` on the same deployment."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch
import yaml
from openai.types.chat import ChatCompletionMessageParam
from openai.types.completion_choice import Logprobs as CompletionLogprobs
from prometheus_client.parser import text_string_to_metric_families

from runtime.builders import load_tokenizer
from runtime.client import AsyncClient, Client
from runtime.config import REPO_ROOT
from runtime.engine import Engine
from runtime.launch import Deployment, free_port
from runtime.results import GenerationParams
from workers.hf_model import load_causal_lm

KEY = "test-key"
PROMPT = "def fibonacci(n):"
QUESTION = "Write a function that adds two numbers."
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]  # for the Tandem clients and Engine
SDK_MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]  # the same, for openai
MAX_NEW = 16
TARGET = REPO_ROOT / "models" / "demo" / "target"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = {
        "coordinator": {"client_address": f"tcp://127.0.0.1:{free_port()}",
                        "worker_address": f"tcp://127.0.0.1:{free_port()}",
                        "heartbeat_interval_s": 0.5, "worker_timeout_s": 60.0, "log_level": "WARNING"},
        "verifier": {"model": str(TARGET), "num_threads": 1},
        "drafter": {"kind": "ngram", "num_threads": 1},
        "speculation": {"mode": "async", "tree": {"total_tokens": 8, "depth": 4, "top_k": 2}},
        # one request driven at a time and one queued: the overload test fills both with a stopped verifier
        "limits": {"max_new_tokens": 512, "max_queued_requests": 1, "max_running_per_verifier": 1,
                   "request_timeout_s": 120},
        "server": {"port": free_port(), "api_keys": [KEY], "model_name": "demo",
                   "chat_template": "configs/chat_template.jinja"},
    }
    path = tmp_path_factory.mktemp("serve") / "tandem.yaml"
    path.write_text(yaml.safe_dump(data))
    with Deployment(str(path)) as running:
        running.start(timeout_s=180)  # the HTTP server too: the YAML has a server section
        yield running


@pytest.fixture(scope="module")
def base_url(deployment: Deployment) -> str:
    assert deployment.config.server is not None
    return deployment.config.server.base_url


@pytest.fixture(scope="module")
def reference(deployment: Deployment) -> dict[str, Any]:
    """What the ZeroMQ client answers for the same prompts (greedy)."""
    with Client.from_config(deployment.config_path, timeout_s=120) as client:
        answers = {"completion": client.generate(PROMPT, max_new_tokens=MAX_NEW),
                   "chat": client.chat(MESSAGES, max_new_tokens=MAX_NEW)}

    async def async_chat() -> list[int]:
        async with AsyncClient.from_config(deployment.config_path, timeout_s=120) as client:
            return (await client.chat(MESSAGES, GenerationParams(max_new_tokens=MAX_NEW))).token_ids

    assert asyncio.run(async_chat()) == answers["chat"].token_ids  # both clients apply the same template
    return answers


def sdk(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=120)


def test_completion_equals_client_generate(base_url: str, reference: dict[str, Any]) -> None:
    expected = reference["completion"]
    out = sdk(base_url).completions.create(model="demo", prompt=PROMPT, max_tokens=MAX_NEW, temperature=0)
    assert out.choices[0].text == expected.text and expected.text
    assert out.choices[0].finish_reason == "length"
    num_prompt = len(load_tokenizer(str(TARGET))(PROMPT)["input_ids"])
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (num_prompt, len(expected.token_ids))
    assert out.usage.total_tokens == num_prompt + len(expected.token_ids)
    stats = out.model_extra["tandem"] if out.model_extra else {}
    assert stats["num_verifications"] >= 1 and "acceptance_per_depth" in stats


def test_completion_stream_with_usage(base_url: str, reference: dict[str, Any]) -> None:
    chunks = list(sdk(base_url).completions.create(model="demo", prompt=PROMPT, max_tokens=MAX_NEW, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reference["completion"].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == MAX_NEW


def test_chat_sync_and_async_equal_client_chat(base_url: str, reference: dict[str, Any]) -> None:
    expected = reference["chat"]
    out = sdk(base_url).chat.completions.create(model="demo", messages=SDK_MESSAGES, max_tokens=MAX_NEW,
                                                temperature=0)
    assert out.choices[0].message.content == expected.text and out.choices[0].message.role == "assistant"
    assert out.usage is not None and out.usage.completion_tokens == len(expected.token_ids)

    async def stream() -> tuple[str, Any]:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
        events = await client.chat.completions.create(model="demo", messages=SDK_MESSAGES, max_tokens=MAX_NEW,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in events]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage

    text, usage = asyncio.run(stream())
    assert text == expected.text
    assert usage.prompt_tokens == out.usage.prompt_tokens and usage.completion_tokens == len(expected.token_ids)


def test_engine_chat_equals_client_chat(deployment: Deployment, reference: dict[str, Any]) -> None:
    """The in-process engine applies the same template (from the YAML's server section)."""
    engine = Engine.from_config(deployment.config_path)
    assert engine.chat(MESSAGES, max_new_tokens=MAX_NEW).token_ids == reference["chat"].token_ids


def test_stop_strings_and_max_tokens(base_url: str, reference: dict[str, Any]) -> None:
    full = reference["completion"].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    client = sdk(base_url)
    out = client.completions.create(model="demo", prompt=PROMPT, max_tokens=MAX_NEW, temperature=0, stop=[stop])
    assert out.choices[0].text == full[:full.index(stop)] and out.choices[0].finish_reason == "stop"
    short = client.completions.create(model="demo", prompt=PROMPT, max_tokens=3, temperature=0)
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert full.startswith(short.choices[0].text) and short.choices[0].finish_reason == "length"


def test_bad_fields_keys_and_models_get_openai_errors(base_url: str) -> None:
    client = sdk(base_url)
    with pytest.raises(openai.BadRequestError) as bad_best_of:
        client.completions.create(model="demo", prompt=PROMPT, max_tokens=4, n=2, best_of=3)
    assert bad_best_of.value.status_code == 400 and isinstance(bad_best_of.value.body, dict)
    assert bad_best_of.value.body["param"] == "best_of" and bad_best_of.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad_temperature:
        client.chat.completions.create(model="demo", messages=SDK_MESSAGES, temperature=-1)
    assert isinstance(bad_temperature.value.body, dict) and bad_temperature.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="max_tokens") as too_long:  # named as the user sent it
        client.completions.create(model="demo", prompt=PROMPT, max_tokens=100000)
    assert isinstance(too_long.value.body, dict) and too_long.value.body["param"] == "max_tokens"
    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk(base_url, key="wrong").completions.create(model="demo", prompt=PROMPT, max_tokens=4)
    assert bad_key.value.status_code == 401
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=4)
    missing = httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT})
    assert missing.status_code == 401 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    keyless_bad_body = httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT, "temperature": -1})
    assert keyless_bad_body.status_code == 401  # the key is checked before the body says anything
    assert [m.id for m in client.models.list()] == ["demo"]
    health = httpx.get(f"{base_url}/health")  # no key needed
    assert health.status_code == 200 and health.json()["workers"]["verifier"] == 1


@pytest.fixture(scope="module")
def target_model() -> Any:
    return load_causal_lm(str(TARGET), torch.float32, "cpu", "sdpa")


def forward_log_probs(model: Any, ids: list[int]) -> torch.Tensor:
    """log_softmax of a plain transformers forward (fp32): row p is the distribution of token p + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_completion_logprobs_and_echo_equal_a_plain_forward(base_url: str, target_model: Any) -> None:
    """What lm-eval's loglikelihood requests send (echo + logprobs, max_tokens 1 and 0, token ids as prompt)."""
    tokenizer = load_tokenizer(str(TARGET))
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    client = sdk(base_url)
    out = client.completions.create(model="demo", prompt=[prompt_ids], max_tokens=4, temperature=0, echo=True,
                                    logprobs=3)
    choice = out.choices[0]
    assert choice.logprobs is not None and choice.text.startswith(PROMPT)
    assert choice.logprobs.tokens is not None and choice.logprobs.token_logprobs is not None
    assert choice.logprobs.top_logprobs is not None and choice.logprobs.text_offset is not None
    ids = prompt_ids + tokenizer(choice.text[len(PROMPT):], add_special_tokens=False)["input_ids"]
    assert len(choice.logprobs.tokens) == len(ids) == len(prompt_ids) + 4
    reference = forward_log_probs(target_model, ids)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    want = reference[range(len(ids) - 1), ids[1:]]
    torch.testing.assert_close(torch.tensor(choice.logprobs.token_logprobs[1:]), want, atol=1e-5, rtol=0)
    for position, top in enumerate(choice.logprobs.top_logprobs[1:]):
        best = reference[position].topk(3)
        assert {tokenizer.decode([int(t)]) for t in best.indices} <= set(top)
        assert max(top.values()) == pytest.approx(float(best.values[0]), abs=1e-5)
    assert choice.logprobs.text_offset[:2] == [0, len(choice.logprobs.tokens[0])]
    scored = client.completions.create(model="demo", prompt=[prompt_ids], max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].text == PROMPT and scored.usage is not None and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs is not None
    assert scored.choices[0].logprobs.token_logprobs == choice.logprobs.token_logprobs[:len(prompt_ids)]


def test_chat_logprobs_streamed_and_not(base_url: str, target_model: Any) -> None:
    client = sdk(base_url)
    out = client.chat.completions.create(model="demo", messages=SDK_MESSAGES, max_tokens=6, temperature=0.8, seed=5,
                                         logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content if out.choices[0].logprobs else None
    assert content is not None and out.usage is not None and len(content) == out.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)
    assert "".join(c.token for c in content) == out.choices[0].message.content
    chunks = list(client.chat.completions.create(model="demo", messages=SDK_MESSAGES, max_tokens=6, temperature=0.8,
                                                 seed=5, logprobs=True, top_logprobs=2, stream=True))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content or []]
    assert [(c.token, c.logprob) for c in streamed] == [(c.token, c.logprob) for c in content]


def num_tokens(logprobs: CompletionLogprobs) -> int:
    assert logprobs.tokens is not None
    return len(logprobs.tokens)


def test_n_samples_with_a_seed(base_url: str) -> None:
    client = sdk(base_url)
    first = client.completions.create(model="demo", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11, n=4,
                                      logprobs=0)
    again = client.completions.create(model="demo", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11, n=4)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1
    single = client.completions.create(model="demo", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11)
    assert single.choices[0].text == first.choices[0].text  # sample 0 keeps the seed
    assert first.usage is not None and single.usage is not None
    assert first.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert first.usage.completion_tokens == sum(num_tokens(c.logprobs) for c in first.choices if c.logprobs)
    chat = client.chat.completions.create(model="demo", messages=SDK_MESSAGES, max_tokens=4, temperature=1.0, seed=2,
                                          n=3, stream=True, stream_options={"include_usage": True})
    texts = ["", "", ""]
    usage = None
    for chunk in chat:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens <= 12 and all(texts)


def test_overloaded_queue_is_429(deployment: Deployment, base_url: str) -> None:
    """A stopped verifier holds the first request; the second waits in the queue (limit 1); the third is refused."""
    verifier = deployment.processes["verifier"]

    async def scenario() -> tuple[Any, list[Any]]:
        http = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
        async with AsyncClient(deployment.config.coordinator.client_address, timeout_s=30) as zmq_client:
            os.kill(verifier.pid, signal.SIGSTOP)
            try:
                running = asyncio.ensure_future(http.completions.create(model="demo", prompt=PROMPT, max_tokens=4))
                await wait_for(zmq_client, lambda m: m["num_active"] == 1)
                queued = asyncio.ensure_future(http.completions.create(model="demo", prompt=PROMPT, max_tokens=4))
                await wait_for(zmq_client, lambda m: m["num_queued"] == 1)
                with pytest.raises(openai.RateLimitError) as refused:
                    await http.completions.create(model="demo", prompt=PROMPT, max_tokens=4)
            finally:
                os.kill(verifier.pid, signal.SIGCONT)
            return refused.value, list(await asyncio.gather(running, queued))

    refused, served = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.body["code"] == "overloaded"
    assert [s.usage.completion_tokens for s in served] == [4, 4]


def test_disconnect_mid_stream_cancels_the_request(deployment: Deployment, base_url: str) -> None:
    with Client(deployment.config.coordinator.client_address, timeout_s=30) as client:
        before = client.metrics()["num_generated"]
        body = {"model": "demo", "prompt": PROMPT, "max_tokens": 500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert first.startswith("data: ")
        metrics = wait_for_sync(client, lambda m: m["num_active"] == 0
                                and all(w["num_requests"] == 0 for w in m["workers"]))
    assert metrics["num_generated"] - before < 500  # cancelled, not run to its 500 tokens


@pytest.mark.parametrize("moment", ["decoding", "prefilling"])
def test_hang_up_cancels_a_non_streamed_request(deployment: Deployment, base_url: str, moment: str) -> None:
    """A client that hangs up on a non-streamed request cancels it: the coordinator reports it cancelled and
    no worker holds it.

    decoding: the server is stopped until more chunks wait behind the first, so it sees the hang-up in a
    burst of chunks, as a server that lags under load does (asyncio.wait_for then lost the cancellation and
    the request ran to its last token). prefilling: the verifier is stopped, so the hang-up comes before the
    first chunk (while queued or prefilling)."""
    body = json.dumps({"model": "demo", "prompt": PROMPT, "max_tokens": 500, "ignore_eos": True,
                       "temperature": 1.0, "seed": 3}).encode()  # sampled: prompt lookup rarely matches
    url = httpx.URL(base_url)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    stopped = deployment.processes["server" if moment == "decoding" else "verifier"]
    with Client(deployment.config.coordinator.client_address, timeout_s=30) as client:
        before = client.metrics()
        if moment == "prefilling":
            os.kill(stopped.pid, signal.SIGSTOP)
        try:
            # a raw socket, closed on purpose: a library client may keep a timed-out connection open until its
            # exception is garbage-collected
            with socket.create_connection((url.host, url.port)) as connection:
                connection.sendall(head + body)
                wait_for_sync(client, lambda m: m["num_active"] == 1)  # submitted, nothing answered yet
                if moment == "decoding":
                    os.kill(stopped.pid, signal.SIGSTOP)
                    wait_for_sync(client, lambda m: m["num_generated"] - before["num_generated"] >= 4)
            if moment == "decoding":
                os.kill(stopped.pid, signal.SIGCONT)
            cancelled = wait_for_sync(client, lambda m: m["num_cancelled"] > before["num_cancelled"]
                                      and m["num_active"] == 0)  # the verifier may still be stopped
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        after = wait_for_sync(client, lambda m: m["num_active"] == m["num_queued"] == 0
                              and all(w["num_requests"] == w["worker_num_requests"] == 0 for w in m["workers"]))
    assert cancelled["num_cancelled"] - before["num_cancelled"] == 1
    assert scrape(base_url)[("tandem:request_cancelled_total", ())] == after["num_cancelled"]  # also on /metrics
    assert after["num_finished"] - before["num_finished"] == 1  # only as cancelled: not run to its 500 tokens
    assert after["num_generated"] - before["num_generated"] < 500
    if moment == "prefilling":
        assert after["num_generated"] == before["num_generated"]  # the verifier's first token came too late


def test_metrics_agree_with_request_stats(base_url: str) -> None:
    before = scrape(base_url)
    client = sdk(base_url)
    outs = [client.completions.create(model="demo", prompt=p, max_tokens=MAX_NEW, temperature=0)
            for p in (PROMPT, "import os\nimport sys\n")]
    after = scrape(base_url)
    stats = [o.model_extra["tandem"] for o in outs if o.model_extra]

    def delta(name: str, labels: dict[str, str] | None = None) -> float:
        return after.get((name, tuple(sorted((labels or {}).items()))), 0.0) - \
            before.get((name, tuple(sorted((labels or {}).items()))), 0.0)

    assert delta("tandem:spec_decode_num_drafts_total") == sum(s["num_verifications"] for s in stats) > 0
    assert delta("tandem:spec_decode_num_accepted_tokens_total") == sum(sum(s["accepted_per_depth"]) for s in stats)
    depth0 = sum(s["accepted_per_depth"][0] for s in stats if s["accepted_per_depth"])
    assert delta("tandem:spec_decode_num_accepted_tokens_per_pos_total", {"position": "0"}) == depth0
    assert delta("tandem:generation_tokens_total") == sum(o.usage.completion_tokens for o in outs if o.usage)
    assert delta("tandem:e2e_request_latency_seconds_count") == 2
    assert delta("tandem:time_to_first_token_seconds_count") == 2
    assert after[("tandem:num_requests_running", ())] == 0
    assert after[("tandem:spec_decode_drafter_prunes_total", ())] == 0  # exported; `prune_living` is off by default


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{base_url}/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def wait_for(client: AsyncClient, ready: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll the coordinator's metrics until `ready(metrics)`; fail after `timeout_s`."""
    for _ in range(int(timeout_s / 0.05)):
        metrics = await client.metrics()
        if ready(metrics):
            return metrics
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached within {timeout_s} s: {metrics}")


def wait_for_sync(client: Client, ready: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    for _ in range(int(timeout_s / 0.05)):
        metrics = client.metrics()
        if ready(metrics):
            return metrics
        time.sleep(0.05)
    raise AssertionError(f"condition not reached within {timeout_s} s: {metrics}")
