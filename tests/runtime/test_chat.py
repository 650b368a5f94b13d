"""Chat templates on the client side: the demo tokenizer has none, the shipped template supplies one."""

from __future__ import annotations

import pytest

from protocol.errors import ConfigError, RequestError
from runtime.builders import load_tokenizer
from runtime.chat import ChatFormatter, check_messages, load_chat_template
from runtime.config import REPO_ROOT

TEMPLATE = REPO_ROOT / "configs" / "chat_template.jinja"
TARGET = str(REPO_ROOT / "models" / "demo" / "target")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_a_tokenizer_without_a_template_gets_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"server\.chat_template"):
        ChatFormatter(model_dir=TARGET).prompt_ids(MESSAGES)


def test_the_shipped_template_formats_and_tokenizes_without_extra_specials() -> None:
    formatter = ChatFormatter(model_dir=TARGET, chat_template=str(TEMPLATE))
    text = formatter.prompt_text(MESSAGES)
    assert text == "### system:\nBe brief.\n\n### user:\nHi\n\n### assistant:\n"
    tokenizer = load_tokenizer(TARGET)
    assert formatter.prompt_ids(MESSAGES) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_inline_template_text_and_bad_paths() -> None:
    assert load_chat_template("{{ messages }}") == "{{ messages }}"
    with pytest.raises(ConfigError, match="no/such/template"):
        load_chat_template("no/such/template.jinja")


def test_messages_are_checked_and_text_parts_joined() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert check_messages(parts) == [{"role": "user", "content": "ab"}]
    for bad, field in (([], "messages"), ([{"content": "x"}], r"messages\[0\]\.role"),
                       ([{"role": "user", "content": 3}], r"messages\[0\]\.content"), ("hi", "messages")):
        with pytest.raises(RequestError, match=field):
            check_messages(bad)


def test_a_client_without_tokenizer_or_config_says_so() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        ChatFormatter().prompt_ids(MESSAGES)
