"""Request bodies of /v1/completions and /v1/chat/completions, and their `GenerationParams`.

OpenAI's fields, plus vLLM's extra body fields `top_k`, `stop_token_ids` and `ignore_eos`. Fields
OpenAI clients send that Tandem does not act on are accepted and ignored, unless they ask for
something Tandem cannot do (penalties, best_of > n, suffix): those are a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.logprobs import MAX_TOP_LOGPROBS
from protocol.params import MAX_SAMPLES
from runtime.http.errors import bad_field
from runtime.results import GenerationParams


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. `user`, `metadata`: accepted, ignored

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)  # 0: only with echo (completions), to score a prompt
    temperature: float = Field(default=1.0, ge=0.0)  # OpenAI's default; 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # vLLM's extra field; 0 or -1 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=MAX_SAMPLES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def check_supported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_field(name, f"{name} is not supported, got {getattr(self, name)}")

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives per generated token, when logprobs are asked for (None: not asked)."""
        return None

    @property
    def num_prompt_logprobs(self) -> int | None:
        return None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        """The field the user set the token budget with (errors name it)."""
        return "max_tokens"

    def params(self) -> GenerationParams:
        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                top_k=max(self.top_k, 0), seed=self.seed,
                                stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
                                stop_token_ids=tuple(self.stop_token_ids), ignore_eos=self.ignore_eos, n=self.n,
                                logprobs=self.num_logprobs, prompt_logprobs=self.num_prompt_logprobs)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def field_names(self) -> dict[str, str]:
        """A `Generate` field named in a coordinator's error -> the field the user sent."""
        return {"max_new_tokens": self.max_tokens_field, "prompt_ids": "prompt"}


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of is not None and self.best_of != self.n:
            raise bad_field("best_of", f"best_of must equal n ({self.n}): Tandem returns every sample, got "
                                       f"{self.best_of}")
        if self.suffix:
            raise bad_field("suffix", "suffix is not supported")
        if self.max_tokens == 0 and not self.echo:
            raise bad_field("max_tokens", "max_tokens 0 generates nothing: use it with echo (to score the prompt)")

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def num_prompt_logprobs(self) -> int | None:
        """The prompt's logprobs ride along with echo; with max_tokens 0 they are what is asked for."""
        if self.echo and (self.logprobs is not None or self.max_tokens == 0):
            return self.logprobs or 0
        return None

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one text, one list of token ids, or a batch of either (one choice per prompt and sample)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise bad_field("prompt", "prompt is empty: give a string, a list of token ids or a list of either")
        if all(isinstance(p, int) for p in prompt):
            return [[p for p in prompt if isinstance(p, int)]]
        return [p for p in prompt if isinstance(p, (str, list))]

    def field_names(self) -> dict[str, str]:
        return {**super().field_names(), "prompt_logprobs": "echo"}


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = Field(default=None, ge=1)  # newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_field("top_logprobs", "top_logprobs needs logprobs: true")
        if self.max_tokens == 0:
            raise bad_field("max_tokens", "max_tokens must be at least 1")

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def field_names(self) -> dict[str, str]:
        return {**super().field_names(), "logprobs": "top_logprobs"}
