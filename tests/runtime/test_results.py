"""`GenerationParams`: one object for a request's settings, with keyword overrides."""

from __future__ import annotations

import pytest

from protocol.errors import OverloadedError, RequestError, RequestTimeoutError, WorkerDeadError
from protocol.messages import Error, Generate
from runtime.results import GenerationParams, error_to_exception


def test_overrides_replace_fields_and_unknown_names_are_refused() -> None:
    base = GenerationParams(max_new_tokens=8, temperature=0.5)
    assert GenerationParams.of(base, {"seed": 3}) == GenerationParams(max_new_tokens=8, temperature=0.5, seed=3)
    assert GenerationParams.of(None, {}) == GenerationParams()
    with pytest.raises(TypeError, match="max_tokens"):
        GenerationParams.of(base, {"max_tokens": 3})


def test_stop_strings_normalise_and_fields_make_a_generate_message() -> None:
    params = GenerationParams.of(None, {"stop": "\n", "stop_token_ids": [4, 5], "top_k": 7})
    assert params.stop == ("\n",) and params.stop_token_ids == (4, 5)
    text = Generate("r", **params.message_fields("def f():"))
    assert (text.prompt, text.prompt_ids, text.stop, text.stop_token_ids, text.top_k) == \
        ("def f():", None, ["\n"], [4, 5], 7)
    ids = Generate("r", **params.message_fields([1, 2]))
    assert (ids.prompt, ids.prompt_ids) == (None, [1, 2])


@pytest.mark.parametrize(("code", "kind"), [("bad_request", RequestError), ("overloaded", OverloadedError),
                                            ("timeout", RequestTimeoutError)])
def test_error_codes_become_exceptions(code: str, kind: type[Exception]) -> None:
    err = error_to_exception(Error("r1", code, "why"))
    assert isinstance(err, kind) and "why" in str(err)
    assert not isinstance(err, WorkerDeadError) or code == "timeout"  # a timeout is still a WorkerDeadError
