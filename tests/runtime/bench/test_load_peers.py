"""The batched peers' pieces: left padding, the continuous-batching cache size, one padded `generate` call."""

from __future__ import annotations

import pytest

from runtime.bench.load_peers import cache_size, left_pad, padded_generate, references
from runtime.bench.load_records import LoadSettings
from runtime.bench.peers import PeerModels
from tests.models import hf_greedy, tiny_model

PROMPTS = [[5, 6, 7], [40, 41, 42, 40, 41], [9]]


def test_left_pad_pads_on_the_left_and_masks_the_padding() -> None:
    rows, mask = left_pad(PROMPTS, 0)
    assert rows == [[0, 0, 5, 6, 7], [40, 41, 42, 40, 41], [0, 0, 0, 0, 9]]
    assert mask == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]


def test_cache_size_holds_every_request_in_flight() -> None:
    assert cache_size(4, 300, 100, page_size=256) == (9, 256)  # 2 pages each, + 1 spare; at least 256 tokens
    assert cache_size(64, 100, 4000, page_size=256) == (65, 4000)


def test_padded_generate_gives_every_row_exactly_max_new_tokens() -> None:
    model = tiny_model("llama", seed=11)
    model.generation_config.eos_token_id = None
    models = PeerModels(model, None, "cpu")
    settings = LoadSettings(PROMPTS, [1], max_new_tokens=6)
    tokens, first_s, total_s = padded_generate(models, PROMPTS, settings, 6)
    assert [len(row) for row in tokens] == [6, 6, 6]
    assert 0 < first_s <= total_s
    with pytest.raises(ValueError, match="load mode needs at least one prompt"):
        LoadSettings([], [1])
    reference = tiny_model("llama", seed=11)
    reference.generation_config.eos_token_id = None
    assert references(models, settings) == [hf_greedy(reference, p, 6) for p in PROMPTS]
