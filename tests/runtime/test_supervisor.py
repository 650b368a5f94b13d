"""The supervisor's restart decisions, with a fake clock and fake processes (no real processes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from runtime.config_schema import SupervisionConfig
from runtime.launch import Deployment
from runtime.supervisor import Supervisor, restart_delay


@dataclass
class FakeProcess:
    returncode: int | None = None
    pid: int = 1

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeDeployment:
    processes: dict[str, Any] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def restart(self, name: str) -> None:
        self.started.append(name)
        self.processes[name] = FakeProcess(pid=len(self.started) + 1)


def test_backoff_doubles_up_to_the_cap_and_the_budget_ends_it() -> None:
    config = SupervisionConfig(initial_backoff_s=0.5, max_backoff_s=3.0, max_restarts=5)
    assert [restart_delay(config, n) for n in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    assert restart_delay(SupervisionConfig(restart=False), 0) is None


def test_a_dead_worker_is_restarted_after_its_backoff() -> None:
    now = [0.0]
    deployment = FakeDeployment({"drafter": FakeProcess(returncode=-9), "verifier": FakeProcess()})
    supervisor = Supervisor(cast(Deployment, deployment), SupervisionConfig(initial_backoff_s=1.0),
                            clock=lambda: now[0])
    supervisor.check()
    assert deployment.started == []  # waiting out the backoff
    now[0] = 1.0
    supervisor.check()
    assert deployment.started == ["drafter"] and deployment.processes["drafter"].poll() is None
    deployment.processes["drafter"].returncode = 1  # dies again: twice the wait
    now[0] = 2.0
    supervisor.check()
    now[0] = 3.9
    supervisor.check()
    assert deployment.started == ["drafter"]
    now[0] = 4.0
    supervisor.check()
    assert deployment.started == ["drafter", "drafter"]


def test_refused_and_over_budget_processes_are_given_up() -> None:
    now = [0.0]
    deployment = FakeDeployment({"drafter": FakeProcess(returncode=2)})
    config = SupervisionConfig(initial_backoff_s=1.0, max_restarts=1, restart_window_s=100.0)
    supervisor = Supervisor(cast(Deployment, deployment), config, clock=lambda: now[0])
    supervisor.check()
    now[0] = 50.0
    supervisor.check()
    assert deployment.started == []  # exit code 2: refused, restarting cannot help
    deployment.processes["verifier"] = FakeProcess(returncode=-9)
    supervisor.check()
    now[0] = 51.0
    supervisor.check()
    deployment.processes["verifier"].returncode = -9
    now[0] = 60.0
    supervisor.check()
    now[0] = 99.0
    supervisor.check()
    assert deployment.started == ["verifier"]  # budget of 1 per window spent
