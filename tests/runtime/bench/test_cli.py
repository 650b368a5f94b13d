"""The bench's command line, without running any method."""

from __future__ import annotations

import pytest

from runtime.bench.cli import main


def test_list_methods_names_every_peer_and_tandem_method(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--list-methods"])
    names = capsys.readouterr().out.split("\n")
    assert [n for n in names if n] == [
        "hf-generate", "hf-generate (1 core)", "hf-prompt-lookup", "hf-prompt-lookup (1 core)", "hf-assisted",
        "hf-assisted (1 core)", "tandem-off", "tandem-sync-falcon", "tandem-async-falcon", "tandem-sync-model",
        "tandem-async-model", "tandem-sync-ngram", "tandem-async-ngram", "tandem-sync-useless",
        "tandem-async-useless"]


def test_scale_mode_refuses_sampling() -> None:
    with pytest.raises(SystemExit, match="greedy only"):
        main(["--scale", "--temperature", "0.7", "--list-methods"])
