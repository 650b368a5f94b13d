"""Chat messages -> prompt token ids with a chat template, on the client side of the coordinator.

The template is the tokenizer's own (`tokenizer.chat_template`) unless one is given: as Jinja text or
as the path of a file (`server.chat_template` in YAML, `chat_template=` on the clients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError, RequestError


def load_chat_template(value: str) -> str:
    """Template text from a file path, or `value` itself when it already is Jinja text."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"chat_template: cannot read template file {value!r} ({exc.strerror or exc})") from exc


def check_messages(messages: object) -> list[dict[str, str]]:
    """OpenAI-style messages as plain {role, content} dicts; text content parts are joined."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"messages[{i}] must be an object with role and content, got {message!r}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise RequestError(f"messages[{i}].role must be a non-empty string, got {role!r}")
        checked.append({"role": role, "content": _text(f"messages[{i}].content", content)})
    return checked


def _text(key: str, content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"{key} must be a string or a list of text parts, got {content!r}")


class ChatFormatter:
    """Applies a chat template; the tokenizer is loaded from `model_dir` on first use when not given."""

    def __init__(self, tokenizer: Any = None, chat_template: str | None = None,
                 model_dir: str | None = None) -> None:
        self._tokenizer = tokenizer
        self.model_dir = model_dir
        self.template = load_chat_template(chat_template) if chat_template else None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.model_dir is not None:
            from runtime.builders import load_tokenizer  # lazy: transformers only when chat is used

            self._tokenizer = load_tokenizer(self.model_dir)
        if self._tokenizer is None:
            raise ConfigError("chat needs a tokenizer: give tokenizer= (or a config whose verifier.model has one)")
        return self._tokenizer

    def prompt_text(self, messages: object) -> str:
        tokenizer = self.tokenizer
        if self.template is None and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template: set server.chat_template in the YAML "
                              "(e.g. configs/chat_template.jinja) or pass chat_template=")
        text = tokenizer.apply_chat_template(check_messages(messages), tokenize=False, add_generation_prompt=True,
                                             chat_template=self.template)
        return str(text)

    def prompt_ids(self, messages: object) -> list[int]:
        """The template's text tokenized without extra special tokens (the template writes its own)."""
        return list(self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"])
