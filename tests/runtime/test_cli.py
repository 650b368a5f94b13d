"""The `tandem` command: dispatch to scripts, with `--config` and validated `--set` overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protocol.errors import WorkerDeadError
from runtime import cli
from runtime.builders import load_tokenizer
from runtime.client import Client
from runtime.config import DEFAULT_CONFIG_PATH, REPO_ROOT, TandemConfig
from runtime.config_overrides import write_effective
from runtime.launch import free_port
from tests.models import hf_greedy
from workers.hf_model import load_causal_lm

PROMPT = "def fibonacci(n):"

RECORDER = '''
import json, sys
from pathlib import Path
from runtime.config import TandemConfig
args = sys.argv[1:]
config = TandemConfig.load(args[args.index("--config") + 1]) if "--config" in args else None
Path(__file__).with_suffix(".json").write_text(json.dumps({
    "argv": args, "max_queued": config.limits.max_queued_requests if config else None}))
sys.exit(3)
'''


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("launch.py", "worker.py", "train_drafter.py"):
        (tmp_path / name).write_text(RECORDER)
    monkeypatch.setattr(cli, "SCRIPTS", tmp_path)
    return tmp_path


def recorded(scripts: Path, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((scripts / name).with_suffix(".json").read_text())
    return data


def test_dispatch_passes_config_and_arguments_and_returns_the_exit_status(scripts: Path) -> None:
    assert cli.main(["worker", "--role", "drafter", "--config", str(DEFAULT_CONFIG_PATH)]) == 3
    assert recorded(scripts, "worker") == {"argv": ["--config", str(DEFAULT_CONFIG_PATH), "--role", "drafter"],
                                           "max_queued": 256}


def test_set_overrides_reach_the_script_through_an_effective_yaml(scripts: Path) -> None:
    assert cli.main(["launch", "--set", "limits.max_queued_requests=7"]) == 3  # default: configs/demo.yaml
    record = recorded(scripts, "launch")
    assert record["max_queued"] == 7
    assert record["argv"][1] != str(DEFAULT_CONFIG_PATH)  # type: ignore[index]


def test_unknown_override_key_is_an_error_naming_it(scripts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["launch", "--set", "limits.max_queud_requests=1"]) == 2
    assert "unknown key limits.max_queud_requests" in capsys.readouterr().err
    assert not (scripts / "launch.json").exists()  # the script never ran


def test_train_drafter_gets_the_configs_target_and_drafter(scripts: Path) -> None:
    assert cli.main(["train-drafter", "--config", str(DEFAULT_CONFIG_PATH), "--num-layers", "1"]) == 3
    config = TandemConfig.load(DEFAULT_CONFIG_PATH)
    assert config.drafter is not None
    assert recorded(scripts, "train_drafter")["argv"] == ["--target", config.verifier.model, "--out",
                                                          config.drafter.model, "--num-layers", "1"]


def test_a_missing_script_is_a_clear_error(scripts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench"]) == 2
    assert "bench.py does not exist" in capsys.readouterr().err


def test_the_real_scripts_run_under_tandem() -> None:
    """`python -m runtime.cli worker --help` reaches scripts/worker.py's own parser."""
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "worker", "--help"], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=False)
    assert out.returncode == 0 and "--role" in out.stdout
    assert set(cli.COMMANDS) == {"serve", "launch", "generate", "bench", "train-drafter", "coordinator", "worker"}


def test_generate_without_a_deployment_says_how_to_start_one(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    """Nothing listens at the address: a hint from the probe, not the request's own timeout (set far away)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    code = cli.main(["generate", "hi", "--set", f"coordinator.client_address={address}", "--timeout-s", "600",
                     "--probe-timeout-s", "1"])
    err = capsys.readouterr().err
    assert code == 1 and f"nothing answers at {address}" in err
    assert "tandem launch" in err and "--local" in err
    with pytest.raises(WorkerDeadError, match="tandem launch"):
        Client.from_config(str(write_effective(DEFAULT_CONFIG_PATH, [f"coordinator.client_address={address}"],
                                               tmp_path / "c.yaml")), probe_timeout_s=1)


def test_generate_local_runs_the_pipeline_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """--local needs no deployment: the demo target's greedy answer, through Engine (verifier only here)."""
    assert cli.main(["generate", PROMPT, "--local", "--max-new-tokens", "8", "--set", "speculation.mode=off"]) == 0
    out = capsys.readouterr()
    config = TandemConfig.load(DEFAULT_CONFIG_PATH)
    tokenizer = load_tokenizer(config.verifier.model)
    model = load_causal_lm(config.verifier.model, torch.float32, "cpu", "sdpa")
    expected = hf_greedy(model, tokenizer(PROMPT)["input_ids"], 8)
    assert out.out == tokenizer.decode(expected, skip_special_tokens=True)
    assert "[finish: length]" in out.err
