"""Request bodies of /v1/completions and /v1/chat/completions, and their `GenerationParams`.

OpenAI's fields, plus vLLM's extra body fields `top_k`, `stop_token_ids` and `ignore_eos`. Fields
OpenAI clients send that Tandem does not act on are accepted and ignored, unless they ask for
something Tandem cannot do (n > 1, logprobs, echo, penalties): those are a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.http.errors import bad_field
from runtime.results import GenerationParams


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. `user`, `metadata`: accepted, ignored

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)  # OpenAI's default; 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # vLLM's extra field; 0 or -1 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None

    def check_supported(self) -> None:
        if self.n != 1:
            raise bad_field("n", f"n must be 1 (Tandem returns one choice per request), got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_field(name, f"{name} is not supported, got {getattr(self, name)}")
        if self.logprobs not in (None, False, 0):
            raise bad_field("logprobs", "logprobs are not supported")

    def params(self, max_new_tokens: int | None) -> GenerationParams:
        return GenerationParams(max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                top_k=max(self.top_k, 0), seed=self.seed,
                                stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
                                stop_token_ids=tuple(self.stop_token_ids), ignore_eos=self.ignore_eos)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise bad_field("echo", "echo is not supported")
        if self.best_of not in (None, 1):
            raise bad_field("best_of", f"best_of must be 1, got {self.best_of}")
        if self.suffix:
            raise bad_field("suffix", "suffix is not supported")

    def single_prompt(self) -> str | list[int]:
        """The one prompt: text or token ids (a batch of one is unwrapped; larger batches are refused)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            return [int(p) for p in prompt]  # type: ignore[arg-type]
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            return prompt[0]
        raise bad_field("prompt", "prompt must be one string or one list of token ids (no batches)")


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)  # newer name of max_tokens
