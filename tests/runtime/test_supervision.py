"""The launcher keeps a deployment up: workers and the coordinator killed (or stopped) at seeded
random moments, through `scripts/launch.py` as users run it; every output equals an undisturbed run."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.errors import WorkerDeadError
from runtime.client import Client
from tests.models import hf_greedy, tiny_model
from tests.runtime.deploy import save_models, write_config
from tests.runtime.launcher import Launcher, supervised_config

PROMPTS = [[7, 8, 9, 10, 11, 12], [40, 41, 42, 40, 41, 42, 40], [5, 6, 7, 8, 9, 10]]
MAX_NEW = 120


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    target = tiny_model("llama", seed=11)
    return [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]


@pytest.fixture(scope="module")
def launcher(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """async speculation with a perfect drafter (the target itself); a lost drafter shows in the drafts forwarded.

    One deployment for the module: every test leaves it whole (all workers joined) for the next.
    """
    tmp_path = tmp_path_factory.mktemp("supervised")
    drafter = {"kind": "model", "model": str(models["draft"])}
    config = write_config(tmp_path / "t.yaml", models["target"], "async", drafter)
    with Launcher(supervised_config(config), tmp_path / "launch.log") as running:
        running.wait_ready()
        yield running
        assert running.stop() == 0  # SIGTERM stops everything cleanly, restarted processes included


def stream_and_signal(client: Client, launcher: Launcher, prompt: list[int], role: str, at_chunk: int,
                      signum: int = signal.SIGKILL) -> list[int]:
    tokens: list[int] = []
    for i, chunk in enumerate(client.stream(prompt, max_new_tokens=MAX_NEW)):
        tokens += chunk.token_ids
        if i == at_chunk:
            launcher.signal(role, signum)
    return tokens


@pytest.mark.parametrize("role", ["drafter", "verifier"])
def test_worker_killed_at_random_moments(launcher: Launcher, reference: list[list[int]], role: str) -> None:
    kill_trials(launcher, reference, role, num_trials=3)


@pytest.mark.slow
@pytest.mark.parametrize("role", ["drafter", "verifier"])
def test_worker_killed_many_times(launcher: Launcher, reference: list[list[int]], role: str) -> None:
    kill_trials(launcher, reference, role, num_trials=12, seed=1)


def kill_trials(launcher: Launcher, reference: list[list[int]], role: str, num_trials: int, seed: int = 0) -> None:
    """kill -9 `role` after a seeded random number of chunks, `num_trials` times; outputs must not change."""
    rng = random.Random(f"kill-{role}-{seed}")
    with launcher.client() as client:
        for trial in range(num_trials):
            pid, index = launcher.pid(role), trial % len(PROMPTS)
            at_chunk = rng.randrange(0, 6)
            assert stream_and_signal(client, launcher, PROMPTS[index], role, at_chunk) == reference[index], \
                f"trial {trial}: {role} killed after chunk {at_chunk}"
            launcher.wait_joined()  # the request may finish before the restart (verifier-only is fast)
            assert launcher.pid(role) != pid  # the launcher started a new one
        before = client.metrics()["num_drafts_forwarded"]
        again = client.generate(PROMPTS[0], max_new_tokens=MAX_NEW)
        assert again.token_ids == reference[0]
        assert client.metrics()["num_drafts_forwarded"] > before  # speculation is back: drafts reach the verifier
        metrics = client.metrics()
        assert metrics["num_errors"] == 0 and metrics["num_active"] == 0


@pytest.mark.parametrize("role", ["verifier", "drafter"])
def test_worker_stopped_past_its_timeout_rejoins(launcher: Launcher, reference: list[list[int]], role: str) -> None:
    timeout_s = launcher.config.coordinator.worker_timeout_s
    with launcher.client() as client:
        before = client.metrics()["num_stale_dropped"]
        tokens: list[int] = []
        for i, chunk in enumerate(client.stream(PROMPTS[1], max_new_tokens=MAX_NEW)):
            tokens += chunk.token_ids
            if i == 1:
                pid = launcher.signal(role, signal.SIGSTOP)
                time.sleep(timeout_s + 1.0)  # the coordinator drops it meanwhile
                launcher.signal(role, signal.SIGCONT)
        assert tokens == reference[1]
        assert launcher.pid(role) == pid  # stopped, never exited: not restarted
        launcher.wait_joined()
        assert client.metrics()["num_stale_dropped"] > before  # what it sent before saying Hello again
        assert client.generate(PROMPTS[2], max_new_tokens=MAX_NEW).token_ids == reference[2]


def test_coordinator_killed_clients_get_an_error_then_it_recovers(launcher: Launcher,
                                                                  reference: list[list[int]]) -> None:
    with launcher.client(timeout_s=3.0) as client, pytest.raises(WorkerDeadError, match=launcher.address):
        stream_and_signal(client, launcher, PROMPTS[0], "coordinator", at_chunk=1)
    metrics = launcher.wait_joined()  # a new coordinator; the same workers said Hello again
    assert metrics["num_active"] == 0
    deadline = time.monotonic() + 30  # their next heartbeats: the lost request's state was dropped
    while any(w["worker_num_requests"] != 0 for w in metrics["workers"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        with launcher.client() as client:
            metrics = client.metrics()
    assert [w["worker_num_requests"] for w in metrics["workers"]] == [0, 0]
    with launcher.client() as client:
        assert client.generate(PROMPTS[2], max_new_tokens=MAX_NEW).token_ids == reference[2]


@pytest.mark.slow
def test_demo_deployment_survives_a_falcon_drafter_kill(tmp_path: Path) -> None:
    """The issue's scenario on configs/demo.yaml (Falcon drafter, which needs a features resync to rejoin)."""
    from runtime.config import DEFAULT_CONFIG_PATH
    from runtime.launch import config_variant

    config = supervised_config(config_variant(str(DEFAULT_CONFIG_PATH), tmp_path, "async"))
    with Launcher(config, tmp_path / "launch.log") as launcher:
        launcher.wait_ready()
        with launcher.client() as client:
            prompt = "def fibonacci(n):"
            want = client.generate(prompt, max_new_tokens=96).token_ids
            got: list[int] = []
            for i, chunk in enumerate(client.stream(prompt, max_new_tokens=96)):
                got += chunk.token_ids
                if i == 2:
                    launcher.signal("drafter", signal.SIGKILL)
            assert got == want
            launcher.wait_joined()
            before = client.metrics()["num_drafts_forwarded"]
            again = client.generate(prompt, max_new_tokens=96)
            assert again.token_ids == want and client.metrics()["num_drafts_forwarded"] > before
        assert launcher.stop() == 0
