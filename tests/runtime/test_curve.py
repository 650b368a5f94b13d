"""CURVE on both coordinator sockets: keyed clients and workers get the same output as without it;
a client or worker without a key (or with a key the coordinator does not list) is refused and counted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from protocol.curve import load_client_keys
from protocol.errors import WorkerDeadError
from runtime.client import Client
from runtime.keys import make_keys
from runtime.launch import SCRIPTS, Deployment
from tests.models import hf_greedy, tiny_model
from tests.runtime.deploy import write_config

PROMPT = [7, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Path]]:
    root = tmp_path_factory.mktemp("curve")
    tiny_model("llama", seed=11).save_pretrained(root / "target")
    make_keys(root / "keys", ["client", "worker"])
    make_keys(root / "other", ["outsider"])  # a valid key pair the coordinator does not list
    plain = write_config(root / "plain.yaml", root / "target", "async", {"kind": "ngram"})
    data = yaml.safe_load(plain.read_text())
    data["security"] = {"curve": True, "server_secret_key_file": "keys/server.key_secret",
                        "server_public_key_file": "keys/server.key", "client_keys_dir": "keys/clients",
                        "client_secret_key_file": "keys/private/client.key_secret"}
    secured = root / "secured.yaml"
    secured.write_text(yaml.safe_dump(data))
    with Deployment(str(secured)) as running:
        running.start(timeout_s=120)  # the workers joined with their keys
        yield running, plain


def refused(metrics: dict[str, Any]) -> int:
    return int(metrics["num_auth_refused"])


def test_keyed_client_gets_the_same_output(setup: tuple[Deployment, Path]) -> None:
    deployment, _ = setup
    with Client.from_config(deployment.config_path, timeout_s=60) as client:
        assert client.generate(PROMPT, max_new_tokens=40).token_ids == hf_greedy(tiny_model("llama", seed=11),
                                                                                PROMPT, 40)
        assert {w["role"] for w in client.metrics()["workers"]} == {"verifier", "drafter"}


def test_clients_without_the_right_key_are_refused(setup: tuple[Deployment, Path]) -> None:
    deployment, _ = setup
    address, root = deployment.config.coordinator.client_address, Path(deployment.config_path).parent
    with Client.from_config(deployment.config_path) as client:
        before = refused(client.metrics())
    outsider = load_client_keys(str(root / "other/private/outsider.key_secret"), str(root / "keys/server.key"))
    for keys in (None, outsider):
        with Client(address, timeout_s=2.0, curve=keys) as client, pytest.raises(WorkerDeadError, match=address):
            client.generate(PROMPT, max_new_tokens=4)
    with Client.from_config(deployment.config_path) as client:
        assert refused(client.metrics()) >= before + 2


def test_worker_without_a_key_is_refused(setup: tuple[Deployment, Path]) -> None:
    deployment, plain = setup
    with Client.from_config(deployment.config_path, timeout_s=30) as client:
        before = refused(client.metrics())
        worker = subprocess.Popen([sys.executable, str(SCRIPTS / "worker.py"), "--config", str(plain),
                                   "--role", "drafter", "--id", "keyless"], stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)})
        try:
            deadline = time.monotonic() + 120
            while refused(metrics := client.metrics()) == before and time.monotonic() < deadline:
                time.sleep(0.5)
            assert refused(metrics) > before
            assert sorted(w["identity"] for w in metrics["workers"]) == ["drafter-0", "verifier-0"]
            assert worker.poll() is None  # it waits, refused at every try; nothing crashed
        finally:
            worker.kill()
            worker.wait()
