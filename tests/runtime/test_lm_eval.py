"""lm-evaluation-harness through Tandem's OpenAI-compatible server (`local-completions`) gives what its own `hf`
backend gives on the same model and tasks: the tasks Tandem ships in configs/lm_eval (held-out stdlib code;
a loglikelihood multiple-choice task and a greedy generate_until task). Needs `pip install -e .[eval]`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.config import DEFAULT_CONFIG_PATH, REPO_ROOT
from runtime.launch import Deployment, free_port

pytestmark = pytest.mark.slow  # deselected by default; needs `pip install -e ".[eval]"`

TASKS = "tandem_code_lines,tandem_code_complete"
TARGET = REPO_ROOT / "models" / "demo" / "target"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The demo deployment (Falcon drafter, async) with its HTTP server, on free ports."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["coordinator"].update(client_address=f"tcp://127.0.0.1:{free_port()}",
                               worker_address=f"tcp://127.0.0.1:{free_port()}")
    data["server"]["port"] = free_port()
    for section in ("verifier", "drafter"):
        data[section]["model"] = str(REPO_ROOT / data[section]["model"])
    data["server"]["chat_template"] = str(REPO_ROOT / data["server"]["chat_template"])
    path = tmp_path_factory.mktemp("lm_eval") / "tandem.yaml"
    path.write_text(yaml.safe_dump(data))
    with Deployment(str(path)) as running:
        running.start(timeout_s=300)
        yield running


def lm_eval(model: str, model_args: str, extra: list[str], out: Path) -> dict[str, Any]:
    """Run the `lm_eval` command as README shows it; returns its results and per-task samples."""
    if importlib.util.find_spec("lm_eval") is None:
        raise RuntimeError('lm-eval is not installed: pip install -e ".[eval]"')
    command = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
               "--include_path", str(REPO_ROOT / "configs" / "lm_eval"), "--tasks", TASKS, *extra,
               "--output_path", str(out), "--log_samples"]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **OFFLINE}, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {task: [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
               for task in TASKS.split(",")}
    return {"results": results, "samples": samples}


def by_doc(samples: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {s["doc_id"]: s for s in samples}


def test_lm_eval_through_tandem_equals_lm_eval_on_transformers(deployment: Deployment, tmp_path: Path) -> None:
    assert deployment.config.server is not None
    url = f"{deployment.config.server.base_url}/v1/completions"
    tandem = lm_eval("local-completions", f"model=target,base_url={url},tokenizer={TARGET},"
                     "tokenizer_backend=huggingface,tokenized_requests=True,max_length=1024", ["--batch_size", "4"],
                     tmp_path / "tandem")
    hf = lm_eval("hf", f"pretrained={TARGET},dtype=float32", ["--batch_size", "1", "--device", "cpu"], tmp_path / "hf")
    print(json.dumps({"tandem": tandem["results"], "hf": hf["results"]}, indent=1))  # the report's numbers
    for task, metric in [("tandem_code_lines", "acc,none"), ("tandem_code_lines", "acc_norm,none"),
                         ("tandem_code_complete", "exact_match,none")]:
        assert tandem["results"][task][metric] == hf["results"][task][metric], (task, metric)
    lines_t, lines_h = by_doc(tandem["samples"]["tandem_code_lines"]), by_doc(hf["samples"]["tandem_code_lines"])
    assert set(lines_t) == set(lines_h) and len(lines_t) == 32
    worst = 0.0
    for doc_id, sample in lines_t.items():  # each choice's loglikelihood, not only the argmax
        want = [float(r[0][0]) for r in lines_h[doc_id]["resps"]]
        got = [float(r[0][0]) for r in sample["resps"]]
        assert got == pytest.approx(want, abs=1e-4), doc_id
        worst = max(worst, *(abs(g - w) for g, w in zip(got, want, strict=True)))
    print(f"largest loglikelihood difference: {worst:.2e}")
    gen_t, gen_h = by_doc(tandem["samples"]["tandem_code_complete"]), by_doc(hf["samples"]["tandem_code_complete"])
    assert {d: s["filtered_resps"] for d, s in gen_t.items()} == {d: s["filtered_resps"] for d, s in gen_h.items()}
    assert any(s["filtered_resps"][0] for s in gen_t.values())  # something was generated
