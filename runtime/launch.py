"""Starting and stopping a whole deployment from one YAML file (used by scripts/launch.py and tests)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from protocol.errors import TandemError, WorkerDeadError
from runtime.client import Client
from runtime.config import TandemConfig
from runtime.security import client_keys

log = logging.getLogger(__name__)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_variant(config_path: str, out_dir: Path, mode: str, fresh_ports: bool = True) -> Path:
    """A copy of a deployment YAML with another speculation mode (and free ports), model paths absolute."""
    data = yaml.safe_load(Path(config_path).read_text())
    config = TandemConfig.load(config_path)
    data.setdefault("speculation", {})["mode"] = mode
    data.pop("server", None)  # a variant measures the runtime: no HTTP server
    data["verifier"]["model"] = config.verifier.model
    if config.verifier.hidden_transfer is not None:
        data["verifier"]["hidden_transfer"] = config.verifier.hidden_transfer
    if config.drafter is not None and config.drafter.model is not None:
        data["drafter"]["model"] = config.drafter.model
    if fresh_ports:
        data.setdefault("coordinator", {}).update(client_address=f"tcp://127.0.0.1:{free_port()}",
                                                  worker_address=f"tcp://127.0.0.1:{free_port()}")
    path = out_dir / f"{Path(config_path).stem}-{mode}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Deployment:
    """Coordinator + verifier (+ drafter) as child processes of this one."""

    def __init__(self, config_path: str) -> None:
        self.config_path = str(config_path)
        self.config = TandemConfig.load(self.config_path)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, timeout_s: float = 300.0) -> None:
        """Start every process and wait until each worker's handshake is done."""
        self.processes["coordinator"] = self._spawn("coordinator.py")
        self.start_worker("verifier")
        if self.config.uses_drafter:
            self.start_worker("drafter")
        self.wait_ready(timeout_s)
        if self.config.server is not None:  # the OpenAI-compatible HTTP server (runtime.http)
            from runtime.http.serve import wait_healthy

            self.processes["server"] = self._spawn("serve.py")
            wait_healthy(self.config.server.base_url, timeout_s, self._check_alive)

    def start_worker(self, role: str) -> None:
        self.processes[role] = self._spawn("worker.py", "--role", role, "--id", f"{role}-0")

    def _spawn(self, script: str, *extra: str) -> subprocess.Popen[bytes]:
        # the processes run this checkout's code, also where the environment's install points elsewhere
        path = os.pathsep.join(p for p in (str(SCRIPTS.parent), os.environ.get("PYTHONPATH", "")) if p)
        return subprocess.Popen([sys.executable, str(SCRIPTS / script), "--config", self.config_path, *extra],
                                env={**os.environ, "PYTHONPATH": path})

    def restart(self, name: str) -> None:
        """Start process `name` again with the command line it was first started with (runtime/supervisor.py)."""
        self.processes[name] = subprocess.Popen(self.processes[name].args)

    def wait_ready(self, timeout_s: float, roles: tuple[str, ...] | None = None) -> None:
        wanted = set(roles or (("verifier", "drafter") if self.config.uses_drafter else ("verifier",)))
        deadline = time.monotonic() + timeout_s
        with Client(self.config.coordinator.client_address, 1.0, curve=client_keys(self.config.security)) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    joined = {w["role"] for w in client.metrics()["workers"]}
                except WorkerDeadError:
                    continue
                if wanted <= joined:
                    return
                time.sleep(0.2)
        raise TandemError(f"deployment {self.config_path} not ready within {timeout_s} s (waiting for {wanted})")

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise TandemError(f"{name} exited with code {process.returncode} during start-up")

    def kill(self, name: str) -> None:
        """Kill one process at once (failure tests)."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Coordinator first (it tells the workers to shut down), then whatever is left."""
        order = ["coordinator"] + [n for n in self.processes if n != "coordinator"]
        for name in order:
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s: killed", name, timeout_s)
                    process.kill()
                    process.wait()
        self.processes.clear()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
