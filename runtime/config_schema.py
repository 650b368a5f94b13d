"""Frozen, self-validating dataclasses for the sections of a deployment YAML (loaded by runtime.config).

Each class checks its fields in `__post_init__` and raises ConfigError naming the dotted key
(`verifier.num_threads`) and the bad value, so objects built in code or by `dataclasses.replace`
are held to the same rules as loaded ones. Importing this module does not import torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from protocol.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from protocol.params import TreeConfig

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
DRAFTER_KINDS = ("falcon", "model", "ngram", "oracle")  # oracle: benchmark only (scale mode)
MODEL_FREE_KINDS = ("ngram", "oracle")
SPECULATION_MODES = ("async", "sync", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FALLBACK_MAX_NEW_TOKENS = 128  # a request's default when limits.default_max_new_tokens is null

_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
_TCP = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})")  # host or [ipv6] : port


def check_int(key: str, value: object, minimum: int | None = None) -> int:
    """`value` as an int (bools refused), at least `minimum`; else ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")
    return value


def check_positive_float(key: str, value: object) -> float:
    """`value` as a finite float > 0 (ints accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not 0 < value < math.inf:
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(key: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value


def validate_address(address: object, key: str = "address") -> str:
    """A ZeroMQ endpoint: tcp://host:port (port 1..65535, host may be * or [ipv6]), ipc://path, inproc://name."""
    text = check_str(key, address)
    scheme, _, rest = text.partition("://")
    if scheme == "tcp" and (match := _TCP.fullmatch(rest)):
        if 1 <= int(match.group(2)) <= 65535:
            return text
        raise ConfigError(f"{key} port must be in 1..65535, got {address!r}")
    if scheme in ("ipc", "inproc") and rest and not rest.isspace():
        return text
    raise ConfigError(f"{key} must be tcp://host:port, ipc://path or inproc://name, got {address!r}")


def _check_affinity(key: str, value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    cores = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not cores or not all(type(core) is int and core >= 0 for core in cores):
        raise ConfigError(f"{key} must be null or a non-empty list of CPU core ids >= 0, got {value!r}")
    if len(set(cores)) != len(cores):
        raise ConfigError(f"{key} must not repeat a core, got {value!r}")
    return cores


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


@dataclass(frozen=True, kw_only=True)
class CoordinatorConfig:
    """Where the coordinator binds, and how fast it declares a silent worker dead."""

    client_address: str = "tcp://127.0.0.1:5555"
    worker_address: str = "tcp://127.0.0.1:5556"
    heartbeat_interval_s: float = 0.5
    worker_timeout_s: float = 5.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        validate_address(self.client_address, "coordinator.client_address")
        validate_address(self.worker_address, "coordinator.worker_address")
        if self.client_address == self.worker_address:
            raise ConfigError(f"coordinator.worker_address must differ from client_address, "
                              f"both are {self.client_address!r}")
        _set(self, "heartbeat_interval_s", check_positive_float("coordinator.heartbeat_interval_s",
                                                                self.heartbeat_interval_s))
        _set(self, "worker_timeout_s", check_positive_float("coordinator.worker_timeout_s", self.worker_timeout_s))
        if self.worker_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError(f"coordinator.worker_timeout_s must exceed heartbeat_interval_s "
                              f"({self.heartbeat_interval_s!r}), got {self.worker_timeout_s!r}")
        level = self.log_level.upper() if isinstance(self.log_level, str) else self.log_level
        _set(self, "log_level", check_choice("coordinator.log_level", level, LOG_LEVELS))


@dataclass(frozen=True, kw_only=True)
class _Placement:
    """Model and placement keys shared by the verifier and drafter sections."""

    SECTION: ClassVar[str] = "worker"

    model: str | None  # local HF checkpoint dir, made absolute by TandemConfig.load; defaults set per role
    dtype: str = "float32"
    device: str = "cpu"
    cpu_affinity: tuple[int, ...] | None = None
    num_threads: int | None = None  # torch intra-op threads; None = torch's default
    attn_implementation: str = "sdpa"

    def _check_placement(self) -> None:
        section = self.SECTION
        if self.model is not None:
            check_str(f"{section}.model", self.model)
        check_choice(f"{section}.dtype", self.dtype, DTYPES)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"{section}.device must be cpu, mps, cuda or cuda:N, got {self.device!r}")
        _set(self, "cpu_affinity", _check_affinity(f"{section}.cpu_affinity", self.cpu_affinity))
        if self.num_threads is not None:
            check_int(f"{section}.num_threads", self.num_threads, 1)
        check_choice(f"{section}.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch  # lazy: the coordinator and client never need torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]


@dataclass(frozen=True, kw_only=True)
class VerifierConfig(_Placement):
    """The target model's process: `model` is required."""

    SECTION: ClassVar[str] = "verifier"

    model: str
    max_length: int | None = None  # tokens one slot of the KV cache holds; None = min(model context, limits)
    max_batch: int | None = None  # requests verified in one forward; None = every running one
    prefill_chunk: int = 256  # prompt tokens per prefill forward, interleaved with verifications
    compile: bool = False  # torch.compile the verification forward on bucketed shapes (workers/compiled_forward.py)
    lean_forward: bool = True  # transformers' math without its module machinery (workers/lean_decoder.py)
    hidden_transfer: str | None = None  # Hidden Transfer maps directory (scripts/train_hidden.py); None = off
    # while speculation is paused (speculation.disable_at_requests), a pinned CPU verifier also runs on the
    # pinned CPU drafter's cores, one thread per core (workers/elastic.py); it lost on the 2-core demo layout
    borrow_drafter_cores: bool = False

    def __post_init__(self) -> None:
        check_str("verifier.model", self.model)
        if self.hidden_transfer is not None:
            check_str("verifier.hidden_transfer", self.hidden_transfer)
        self._check_placement()
        for key in ("max_length", "max_batch"):
            if getattr(self, key) is not None:
                check_int(f"verifier.{key}", getattr(self, key), 1)
        check_int("verifier.prefill_chunk", self.prefill_chunk, 1)
        for key in ("compile", "lean_forward", "borrow_drafter_cores"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"verifier.{key} must be true or false, got {getattr(self, key)!r}")


@dataclass(frozen=True, kw_only=True)
class DrafterConfig(_Placement):
    """The drafter's process: `model` is required for kinds falcon and model, and refused for ngram and
    oracle (benchmark only: workers/drafters/oracle.py, which needs `oracle_reference`)."""

    SECTION: ClassVar[str] = "drafter"

    kind: str = "falcon"
    model: str | None = None
    max_ngram: int = 3  # ngram only: longest suffix matched against the request's tokens
    min_ngram: int = 1  # ngram only: shortest suffix tried
    oracle_reference: str | None = None  # oracle only: JSON list of prompt + greedy continuation token ids
    oracle_accept_prob: float = 0.8  # oracle only: chance that a main proposal is the target's token
    oracle_step_ms: float = 0.0  # oracle only: simulated cost of one drafter step
    oracle_seed: int = 0  # oracle only: which proposals are right, reproducibly

    def __post_init__(self) -> None:
        check_choice("drafter.kind", self.kind, DRAFTER_KINDS)
        if self.kind in MODEL_FREE_KINDS and self.model is not None:
            raise ConfigError(f"drafter.model must be absent or null for kind {self.kind!r}, got {self.model!r}")
        if self.kind not in MODEL_FREE_KINDS and self.model is None:
            raise ConfigError(f"drafter.model is required for kind {self.kind!r}")
        self._check_placement()
        check_int("drafter.max_ngram", self.max_ngram, 1)
        check_int("drafter.min_ngram", self.min_ngram, 1)
        if self.min_ngram > self.max_ngram:
            raise ConfigError(f"drafter.min_ngram must be <= drafter.max_ngram ({self.max_ngram}), "
                              f"got {self.min_ngram}")
        self._check_oracle()

    def _check_oracle(self) -> None:
        if self.kind == "oracle":
            check_str("drafter.oracle_reference", self.oracle_reference)
        prob = self.oracle_accept_prob
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ConfigError(f"drafter.oracle_accept_prob must be a number in [0, 1], got {prob!r}")
        step = self.oracle_step_ms
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 <= step < math.inf:
            raise ConfigError(f"drafter.oracle_step_ms must be a finite number >= 0, got {step!r}")
        check_int("drafter.oracle_seed", self.oracle_seed, 0)


def _default_tree() -> TreeConfig:
    from protocol.params import TreeConfig

    return TreeConfig()


@dataclass(frozen=True, kw_only=True)
class SpeculationConfig:
    """How drafting runs: async (living tree), sync (draft then verify) or off (verifier only)."""

    mode: str = "async"
    tree: TreeConfig = field(default_factory=_default_tree)
    acceptance: str = "calibrated"  # per-node acceptance estimates: calibrated path probability | learned
    local_lookup: bool = True  # a verifier holding no tree drafts by prompt lookup in the request's own tokens
    merge_sources: bool = True  # verify the union of a request's draft trees (drafter, lookup, hidden); false: the best
    # MCSD's target-initialised candidates: where the exact path stops, a child among the target's top W may be
    # committed instead when its branch is accepted longer. LOSSY (output is no longer the target's); 0 = exact
    target_candidates: int = 0
    # under load speculation steps aside (vLLM's disable_by_batch_size): from this many requests on one
    # verifier it verifies root-only and the drafter idles, back below half of it; 0 = never (workers/elastic.py)
    disable_at_requests: int = 0

    def __post_init__(self) -> None:
        from protocol.params import TreeConfig

        if self.mode is False:  # type: ignore[comparison-overlap]  # YAML 1.1 reads a bare `off` as false
            _set(self, "mode", "off")
        check_choice("speculation.mode", self.mode, SPECULATION_MODES)
        check_choice("speculation.acceptance", self.acceptance, ("calibrated", "learned"))
        for key in ("local_lookup", "merge_sources"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"speculation.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.tree, TreeConfig):
            raise ConfigError(f"speculation.tree must be a TreeConfig, got {self.tree!r}")
        check_int("speculation.target_candidates", self.target_candidates, 0)
        check_int("speculation.disable_at_requests", self.disable_at_requests, 0)
        if self.target_candidates == 1:
            raise ConfigError("speculation.target_candidates must be 0 (off, exact) or at least 2, got 1")


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    """Bounds on what one request and one message may ask for."""

    max_prompt_tokens: int = 2048
    max_new_tokens: int = 1024  # most a request may ask for
    default_max_new_tokens: int | None = None  # for a request that names none; None = min(128, max_new_tokens)
    max_queued_requests: int = 256
    max_running_per_verifier: int = 32  # requests one verifier drives at once (each holds a KV cache)
    request_timeout_s: float = 120.0
    max_message_bytes: int = 64 * 1024 * 1024  # bound on one ZeroMQ message, all frames together

    def __post_init__(self) -> None:
        for key in ("max_prompt_tokens", "max_new_tokens", "max_queued_requests", "max_running_per_verifier"):
            check_int(f"limits.{key}", getattr(self, key), 1)
        check_int("limits.max_message_bytes", self.max_message_bytes, 1024)
        _set(self, "request_timeout_s", check_positive_float("limits.request_timeout_s", self.request_timeout_s))
        if self.default_max_new_tokens is not None:
            check_int("limits.default_max_new_tokens", self.default_max_new_tokens, 1)
            if self.default_max_new_tokens > self.max_new_tokens:
                raise ConfigError(f"limits.default_max_new_tokens must be <= limits.max_new_tokens "
                                  f"({self.max_new_tokens}), got {self.default_max_new_tokens}")

    @property
    def resolved_default_max_new_tokens(self) -> int:
        """`max_new_tokens` of a request that names none."""
        if self.default_max_new_tokens is not None:
            return self.default_max_new_tokens
        return min(FALLBACK_MAX_NEW_TOKENS, self.max_new_tokens)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The OpenAI-compatible HTTP server (runtime.http): where it listens, its API keys, its chat template."""

    host: str = "127.0.0.1"  # loopback unless asked: the server is reachable only from this machine
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # Bearer keys; empty = no authentication
    model_name: str | None = None  # the model id in /v1/models and responses; None = the target dir's name
    chat_template: str | None = None  # Jinja file (resolved like model paths) or text; None = the tokenizer's

    def __post_init__(self) -> None:
        check_str("server.host", self.host)
        check_int("server.port", self.port, 1)
        if self.port > 65535:
            raise ConfigError(f"server.port must be in 1..65535, got {self.port!r}")
        keys = self.api_keys
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)) \
                or not all(isinstance(k, str) and k.strip() for k in keys):
            raise ConfigError(f"server.api_keys must be a list of non-empty strings, got {keys!r}")
        _set(self, "api_keys", tuple(keys))
        for key in ("model_name", "chat_template"):
            if getattr(self, key) is not None:
                check_str(f"server.{key}", getattr(self, key))

    @property
    def base_url(self) -> str:
        """Where a client on this machine reaches the server (a wildcard host is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "*") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class SupervisionConfig:
    """How the launcher restarts a process that exits: exponential backoff, and a budget per window.

    The n-th restart within `restart_window_s` waits `initial_backoff_s * 2**(n-1)` (at most
    `max_backoff_s`); after `max_restarts` in the window the process is given up on (logged).
    """

    restart: bool = True
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_restarts: int = 10
    restart_window_s: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.restart, bool):
            raise ConfigError(f"supervision.restart must be true or false, got {self.restart!r}")
        for key in ("initial_backoff_s", "max_backoff_s", "restart_window_s"):
            _set(self, key, check_positive_float(f"supervision.{key}", getattr(self, key)))
        check_int("supervision.max_restarts", self.max_restarts, 0)
        if self.max_backoff_s < self.initial_backoff_s:
            raise ConfigError(f"supervision.max_backoff_s must be >= initial_backoff_s ({self.initial_backoff_s!r}), "
                              f"got {self.max_backoff_s!r}")


@dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    """Opt-in ZeroMQ CURVE on both coordinator sockets (key files as `zmq.auth.create_certificates` writes them).

    The coordinator needs `server_secret_key_file` and `client_keys_dir` (the public `*.key` files of
    every client and worker it lets in); clients and workers need `server_public_key_file` and their
    own `client_secret_key_file`. Relative paths are resolved against the YAML file's directory.
    """

    curve: bool = False
    server_secret_key_file: str | None = None
    server_public_key_file: str | None = None
    client_secret_key_file: str | None = None
    client_keys_dir: str | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("server_secret_key_file", "server_public_key_file", "client_secret_key_file",
                                       "client_keys_dir")

    def __post_init__(self) -> None:
        if not isinstance(self.curve, bool):
            raise ConfigError(f"security.curve must be true or false, got {self.curve!r}")
        for key in self.KEYS:
            if getattr(self, key) is not None:
                check_str(f"security.{key}", getattr(self, key))

    def require(self, *keys: str) -> list[str]:
        """The values of `keys`; ConfigError naming the first one that is missing."""
        missing = [key for key in keys if getattr(self, key) is None]
        if missing:
            raise ConfigError(f"security.{missing[0]} is required when security.curve is true")
        return [str(getattr(self, key)) for key in keys]
