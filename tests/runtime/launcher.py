"""Helpers for supervision tests: `scripts/launch.py` as users run it, and its children found by role."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from protocol.errors import WorkerDeadError
from runtime.client import Client
from runtime.config import TandemConfig
from runtime.launch import SCRIPTS
from runtime.security import client_keys


def supervised_config(path: Path, **sections: dict[str, Any]) -> Path:
    """Add quick restarts (and any other sections) to a YAML written by tests.runtime.deploy.write_config."""
    data = yaml.safe_load(path.read_text())
    data["supervision"] = {"initial_backoff_s": 0.2, "max_backoff_s": 2.0, "max_restarts": 20}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path


class Launcher:
    """`python scripts/launch.py --config FILE` in a child process, stopped with SIGTERM."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config = TandemConfig.load(config_path)
        self.address = self.config.coordinator.client_address
        self.log = log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, str(SCRIPTS / "launch.py"), "--config", str(config_path)],
                                        stdout=subprocess.PIPE, stderr=self.log,  # this checkout's code:
                                        env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)})
        self.ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if b"ready" in line:
                self.ready.set()

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        if not self.ready.wait(timeout_s):
            raise TimeoutError(f"launcher not ready within {timeout_s} s")

    def client(self, timeout_s: float = 60.0) -> Client:
        return Client(self.address, timeout_s, curve=client_keys(self.config.security))

    def pid(self, role: str) -> int:
        """The live child process running `role` (coordinator, verifier or drafter)."""
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):
                cmdline = child.cmdline()
                if child.status() != psutil.STATUS_ZOMBIE and (
                        f"{role}.py" in cmdline[1] or ("--role" in cmdline and role in cmdline)):
                    return int(child.pid)
        raise LookupError(f"no live {role} process")

    def signal(self, role: str, signum: int) -> int:
        pid = self.pid(role)
        os.kill(pid, signum)
        return pid

    def wait_joined(self, pids: dict[str, int] | None = None, roles: tuple[str, ...] = ("verifier", "drafter"),
                    timeout_s: float = 180.0) -> dict[str, Any]:
        """Metrics once every role has joined (with these pids, when given): the coordinator may be restarting."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(WorkerDeadError, LookupError), self.client(timeout_s=1.0) as client:
                metrics = client.metrics()
                joined = {w["role"]: w["pid"] for w in metrics["workers"]}
                wanted = pids or {role: self.pid(role) for role in roles}
                if all(joined.get(role) == pid for role, pid in wanted.items()):
                    return metrics
            time.sleep(0.2)
        raise TimeoutError(f"workers did not join within {timeout_s} s")

    def stop(self) -> int:
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        finally:
            for child in children:  # a test that failed half-way must not leave processes behind
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.log.close()
        return code

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()
