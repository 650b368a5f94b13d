"""End to end: real processes on loopback, started from YAML, driven through the clients."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
import zmq

from protocol.errors import RequestError
from runtime.client import AsyncClient, Client
from runtime.generate import speculative_generate
from runtime.launch import Deployment
from runtime.stopping import StopRules
from tests.models import hf_greedy, tiny_model
from tests.runtime.deploy import save_models, write_config
from workers.sampling import SamplingParams
from workers.target import TargetVerifier

PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 40, 41, 42, 40], list(range(3, 60))]
MAX_NEW = 40


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    target = tiny_model("llama", seed=11)
    return [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]


@pytest.fixture(scope="module", params=["async", "sync", "off", "async-falcon"])
def deployment(request: pytest.FixtureRequest, models: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    mode, _, kind = str(request.param).partition("-")
    drafter = None if mode == "off" else {"kind": kind or "model", "model": str(models[kind or "draft"])}
    config = write_config(tmp_path_factory.mktemp(str(request.param)) / "tandem.yaml", models["target"], mode, drafter)
    with Deployment(str(config)) as running:
        running.start(timeout_s=120)
        yield running


def test_concurrent_greedy_equals_generate(deployment: Deployment, reference: list[list[int]]) -> None:
    async def run_all() -> list[list[int]]:
        async with AsyncClient(deployment.config.coordinator.client_address, timeout_s=60) as client:
            outputs = await asyncio.gather(*(client.generate(p, max_new_tokens=MAX_NEW) for p in PROMPTS))
            return [o.token_ids for o in outputs]

    assert asyncio.run(run_all()) == reference
    with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
        one = client.generate(PROMPTS[0], max_new_tokens=MAX_NEW)  # one at a time gives the same
        assert one.token_ids == reference[0]
        assert {"tau", "num_verifications", "accepted_per_depth"} <= set(one.stats)
        streamed = [c for c in client.stream(PROMPTS[1], max_new_tokens=MAX_NEW)]
        assert [t for c in streamed for t in c.token_ids] == reference[1]
        assert streamed[-1].finish_reason == "length" and len(streamed) > 1
        metrics = client.metrics()
    drafter = deployment.config.drafter
    if deployment.config.speculation.mode == "async":
        assert metrics["drafter_steps"] > 0 and metrics["num_drafts_forwarded"] > 0  # trees streamed to the verifier
    if deployment.config.uses_drafter and drafter is not None and drafter.kind == "model":
        # the draft model is the target itself: what it drafts is accepted. In sync mode the verifier
        # waits for full-depth drafts; in async mode it never waits, and a drafter as slow as the
        # target rarely gets ahead of it, so only some nodes arrive in time (a cheap drafter would)
        if deployment.config.speculation.mode == "sync":
            assert metrics["tau"] > 1.5
        else:
            assert metrics["num_draft_tokens"] > 0 and metrics["accepted_per_depth"][0] > 0
            # the drafter's living tree follows the commits (the verifier's own hits need the drafter ahead
            # of it, a matter of timing here; test_metrics_truth shows them by construction)
            assert metrics["drafter_reroot_hit_rate"] > 0


def test_seeded_sampling_is_reproducible(deployment: Deployment) -> None:
    params: dict[str, Any] = {"temperature": 0.9, "top_p": 0.95, "seed": 77}
    with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
        first = client.generate(PROMPTS[0], max_new_tokens=30, **params).token_ids
        second = client.generate(PROMPTS[0], max_new_tokens=30, **params).token_ids
    local = speculative_generate(TargetVerifier(tiny_model("llama", seed=11)), None, PROMPTS[0],
                                 SamplingParams(0.9, 0.95, 0, 77), StopRules(30, frozenset({2})))
    assert first == second == local.token_ids


def test_bad_requests_get_clear_errors_and_others_go_on(deployment: Deployment, reference: list[list[int]]) -> None:
    with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
        with pytest.raises(RequestError, match="empty"):
            client.generate([], max_new_tokens=5)
        with pytest.raises(RequestError, match="temperature"):
            client.generate(PROMPTS[0], temperature=-1.0)
        with pytest.raises(RequestError, match="vocabulary"):
            client.generate([5, 100000], max_new_tokens=5)
        with pytest.raises(RequestError, match="no tokenizer"):
            client.generate("text needs a tokenizer", max_new_tokens=5)
        assert client.generate(PROMPTS[0], max_new_tokens=MAX_NEW).token_ids == reference[0]


def test_malformed_messages_are_dropped(deployment: Deployment, reference: list[list[int]]) -> None:
    context = zmq.Context()
    for address in (deployment.config.coordinator.client_address, deployment.config.coordinator.worker_address):
        rogue = context.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(address)
        rogue.send_multipart([b"\xc1 not msgpack"])
        rogue.send_multipart([b"\x81\xa4type\xa5bogus"])  # a map with an unknown type
        time.sleep(0.2)
        rogue.close()
    context.term()
    with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
        assert client.generate(PROMPTS[2], max_new_tokens=MAX_NEW).token_ids == reference[2]
        assert client.metrics()["num_malformed_dropped"] >= 2


def test_cancel_stops_a_request(deployment: Deployment) -> None:
    with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
        stream = client.stream(PROMPTS[0], max_new_tokens=200, ignore_eos=True)
        assert isinstance(stream, Generator)  # a generator, so it can be closed
        next(stream)
        stream.close()  # leaving the stream cancels the request
        assert client.generate(PROMPTS[1], max_new_tokens=5).finish_reason in ("length", "stop")
        assert client.metrics()["num_active"] == 0


def test_speculation_steps_aside_under_load_in_real_processes(models: dict[str, Path], reference: list[list[int]],
                                                              tmp_path: Path) -> None:
    """`speculation.disable_at_requests: 2`, verifier and drafter pinned to different cores: three requests at
    once verify root-only (the verifier on both cores), one alone speculates again, every output is exact."""
    cores = sorted(os.sched_getaffinity(0))
    config = write_config(tmp_path / "tandem.yaml", models["target"], "async",
                          {"kind": "model", "model": str(models["draft"]), "cpu_affinity": cores[:1]})
    data = yaml.safe_load(config.read_text())
    data["verifier"]["cpu_affinity"] = cores[-1:]
    data["verifier"]["borrow_drafter_cores"] = True
    data["speculation"]["disable_at_requests"] = 2
    config.write_text(yaml.safe_dump(data))

    async def run_all(address: str) -> list[list[int]]:
        async with AsyncClient(address, timeout_s=60) as client:
            outputs = await asyncio.gather(*(client.generate(p, max_new_tokens=MAX_NEW) for p in PROMPTS))
            return [o.token_ids for o in outputs]

    with Deployment(str(config)) as deployment:
        deployment.start(timeout_s=120)
        address = deployment.config.coordinator.client_address
        assert asyncio.run(run_all(address)) == reference
        verifier = psutil.Process(deployment.processes["verifier"].pid)
        with Client(address, timeout_s=60) as client:
            assert client.generate(PROMPTS[1], max_new_tokens=MAX_NEW).token_ids == reference[1]  # alone
            for _ in range(100):  # the workers report their counters with each heartbeat
                metrics = client.metrics()
                if metrics["num_paused_batches"] and not metrics["num_verifiers_paused"]:
                    break
                time.sleep(0.1)
        assert metrics["num_paused_batches"] > 0 and metrics["num_speculation_pauses"] >= 1
        assert metrics["num_verifiers_paused"] == 0  # one request at a time: speculating again
        assert metrics["num_draft_tokens"] > 0
        assert verifier.cpu_affinity() == cores[-1:]  # the drafter's cores given back
