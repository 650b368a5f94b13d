"""Failures with real processes: a drafter killed mid-request, a mismatched worker, a busy port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from protocol.errors import WorkerDeadError
from runtime.client import Client
from runtime.launch import SCRIPTS, Deployment, free_port
from tests.models import hf_greedy, tiny_model
from tests.runtime.deploy import save_models, write_config

PROMPT = [7, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killing_the_drafter_mid_request_keeps_the_output(models: dict[str, Path], tmp_path: Path, mode: str) -> None:
    config = write_config(tmp_path / "t.yaml", models["target"], mode,
                          {"kind": "model", "model": str(models["draft"])})
    want = hf_greedy(tiny_model("llama", seed=11), PROMPT, 200)
    with Deployment(str(config)) as deployment:
        deployment.start(timeout_s=120)
        with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
            tokens: list[int] = []
            for i, chunk in enumerate(client.stream(PROMPT, max_new_tokens=200)):
                tokens += chunk.token_ids
                if i == 2:
                    deployment.kill("drafter")  # SIGKILL: no goodbye, only missing heartbeats
            assert tokens == want
            # a drafter comes back: speculation resumes, output unchanged
            deployment.start_worker("drafter")
            deployment.wait_ready(120)
            before = client.metrics()["num_drafts_forwarded"]
            again = client.generate(PROMPT, max_new_tokens=200)
            assert again.token_ids == want
            assert client.metrics()["num_drafts_forwarded"] > before  # the new drafter drafts for it
            if mode == "sync":  # the draft model is the target itself; sync verifies its full drafts
                assert again.stats["tau"] > 1.5


def test_mismatched_drafter_is_refused_naming_both_sides(models: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "t.yaml", models["target"], "sync",
                          {"kind": "model", "model": str(models["bad_draft"])})
    with Deployment(str(config)) as deployment:
        deployment.processes["coordinator"] = deployment._spawn("coordinator.py")
        deployment.start_worker("verifier")
        deployment.wait_ready(120, roles=("verifier",))
        drafter = subprocess.run([sys.executable, str(SCRIPTS / "worker.py"), "--config", str(config),
                                  "--role", "drafter"], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)})  # this checkout's code
        assert drafter.returncode == 2
        assert "vocab_size mismatch" in drafter.stderr and "80" in drafter.stderr and "96" in drafter.stderr
        with Client(deployment.config.coordinator.client_address, timeout_s=30) as client:
            metrics = client.metrics()
            assert metrics["num_workers_refused"] == 1
            assert [w["role"] for w in metrics["workers"]] == ["verifier"]


def test_coordinator_says_which_port_it_cannot_bind(models: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "t.yaml", models["target"], "off", None)
    from runtime.config import TandemConfig

    address = TandemConfig.load(str(config)).coordinator.client_address
    context = zmq.Context()
    squatter = context.socket(zmq.ROUTER)
    squatter.bind(address)
    try:
        result = subprocess.run([sys.executable, str(SCRIPTS / "coordinator.py"), "--config", str(config)],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)})  # this checkout's code
    finally:
        squatter.close(linger=0)
        context.term()
    assert result.returncode == 2
    assert f"cannot bind {address}" in result.stderr


def test_unreachable_coordinator_raises_within_the_timeout() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with Client(address, timeout_s=1.0) as client, pytest.raises(WorkerDeadError, match=address):
        client.generate([5, 6, 7], max_new_tokens=4)
