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
        "tandem-async-useless", "tandem-async-hidden", "tandem-async-falcon-hidden",
        "tandem-async-falcon-cand3"]


def test_scale_mode_refuses_sampling() -> None:
    with pytest.raises(SystemExit, match="greedy only"):
        main(["--scale", "--temperature", "0.7", "--list-methods"])


def test_concurrency_lists_the_load_methods_and_refuses_bad_levels(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--concurrency", "1,4", "--list-methods"])
    names = [n for n in capsys.readouterr().out.split("\n") if n]
    assert names[:3] == ["hf-generate", "hf-generate-batch", "tandem-off"] and "hf-assisted" not in names
    with pytest.raises(SystemExit):
        main(["--concurrency", "0,4", "--list-methods"])
    assert "--concurrency must list integers >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--concurrency", "4", "--num-requests", "0", "--list-methods"])
    assert "must be an integer >= 1, got '0'" in capsys.readouterr().err
