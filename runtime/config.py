"""A deployment's configuration: one YAML file -> one frozen, validated `TandemConfig` (DESIGN.md §9).

YAML keys equal dataclass field names. Unknown keys, missing required keys and wrong types raise
ConfigError naming the dotted key (`verifier.num_threads`) and the file. Importing this module does
not import torch.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from protocol.errors import ConfigError
from runtime.config_overrides import apply_overrides
from runtime.config_schema import (
    CoordinatorConfig,
    DrafterConfig,
    LimitsConfig,
    SecurityConfig,
    ServerConfig,
    SpeculationConfig,
    SupervisionConfig,
    VerifierConfig,
    check_int,
    validate_address,
)

if TYPE_CHECKING:
    from protocol.params import TreeConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "REPO_ROOT",
    "ConfigError",
    "CoordinatorConfig",
    "DrafterConfig",
    "LimitsConfig",
    "SecurityConfig",
    "ServerConfig",
    "SpeculationConfig",
    "SupervisionConfig",
    "TandemConfig",
    "VerifierConfig",
    "resolve_model_path",
    "validate_address",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "demo.yaml"

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class TandemConfig:
    """Every section of one deployment. `drafter` may be None only when `speculation.mode` is off or the
    verifier drafts by itself with Hidden Transfer (`verifier.hidden_transfer`).

    With mode off a drafter section is allowed but unused: no drafter is started or consulted.
    `source` names the file it came from, for error messages; it is not a YAML key.
    """

    verifier: VerifierConfig
    drafter: DrafterConfig | None = None
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    server: ServerConfig | None = None  # the OpenAI-compatible HTTP server; None = not started by launch
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    source: str = field(default="<string>", compare=False)

    def __post_init__(self) -> None:
        if self.drafter is None and self.speculation.mode != "off" and self.verifier.hidden_transfer is None:
            raise ConfigError(f"missing required key drafter (speculation.mode is {self.speculation.mode!r}; "
                              "only mode 'off' or verifier.hidden_transfer runs without a drafter)")

    @classmethod
    def load(cls, path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TandemConfig:
        """Read and validate a YAML file; relative model paths follow `resolve_model_path`.

        `overrides` are `dotted.key=value` strings (`--set`), applied before validation (runtime.config_overrides).
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        source = str(path)
        if overrides:
            data = apply_overrides(data, overrides)
            source += " with --set " + " ".join(overrides)
        return cls.from_dict(data, source=source, base_dir=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: object, source: str = "<string>",
                  base_dir: str | os.PathLike[str] | None = None) -> TandemConfig:
        """Validate parsed YAML. `base_dir` stands for the YAML file's directory (None: repository root only)."""
        try:
            return _build(data, source, Path(base_dir).resolve() if base_dir is not None else None)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def default(cls) -> TandemConfig:
        """The embedded default deployment, configs/demo.yaml."""
        return cls.load(DEFAULT_CONFIG_PATH)

    @property
    def uses_drafter(self) -> bool:
        return self.drafter is not None and self.speculation.mode != "off"

    def worker(self, role: str) -> VerifierConfig | DrafterConfig:
        """The section of the worker process with this role ('verifier' or 'drafter')."""
        if role == "verifier":
            return self.verifier
        if role == "drafter" and self.drafter is not None:
            return self.drafter
        raise ConfigError(f"{self.source}: no worker section for role {role!r}")

    def check_paths(self) -> None:
        """Raise ConfigError naming every `*.model` whose directory does not exist; loading never checks."""
        missing = [f"{section.SECTION}.model directory {section.model} does not exist"
                   for section in (self.verifier, self.drafter)
                   if section is not None and section.model is not None and not Path(section.model).is_dir()]
        hidden = self.verifier.hidden_transfer
        if hidden is not None and not Path(hidden).is_dir():
            missing.append(f"verifier.hidden_transfer directory {hidden} does not exist")
        if missing:
            raise ConfigError(f"{self.source}: " + "; ".join(missing))


def resolve_model_path(path: str, base_dir: Path | None) -> str:
    """Absolute, normalised form of a model path from YAML (`~` expanded).

    A relative path is looked up under the repository root, then under `base_dir` (the YAML file's
    directory); the first that exists wins. If neither exists yet, it resolves under the repository
    root when the YAML file lies inside the repository (or has no file), else under the YAML's
    directory.
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return os.path.normpath(candidate)
    bases = [REPO_ROOT] if base_dir is None else [REPO_ROOT, base_dir]
    existing = [base for base in bases if (base / candidate).exists()]
    if existing:
        return os.path.normpath(existing[0] / candidate)
    fallback = REPO_ROOT if base_dir is None or base_dir.is_relative_to(REPO_ROOT) else base_dir
    return os.path.normpath(fallback / candidate)


def _build(data: object, source: str, base_dir: Path | None) -> TandemConfig:
    top = _mapping("the config", data)
    _check_keys("", top, TandemConfig, exclude=("source",))
    verifier = _section(top, "verifier", VerifierConfig)
    if verifier is None:
        raise ConfigError("missing required key verifier")
    verifier = replace(verifier, model=resolve_model_path(verifier.model, base_dir))
    if verifier.hidden_transfer is not None:
        verifier = replace(verifier, hidden_transfer=resolve_model_path(verifier.hidden_transfer, base_dir))
    drafter = _section(top, "drafter", DrafterConfig)
    if drafter is not None and drafter.model is not None:
        drafter = replace(drafter, model=resolve_model_path(drafter.model, base_dir))
    config = TandemConfig(verifier=verifier, drafter=drafter,
                          coordinator=_section(top, "coordinator", CoordinatorConfig) or CoordinatorConfig(),
                          speculation=_section(top, "speculation", SpeculationConfig) or SpeculationConfig(),
                          limits=_section(top, "limits", LimitsConfig) or LimitsConfig(),
                          server=_server(top, base_dir),
                          supervision=_section(top, "supervision", SupervisionConfig) or SupervisionConfig(),
                          security=_security(top, base_dir), source=source)
    if drafter is not None and not config.uses_drafter:
        logger.info("%s: speculation.mode is off, so the drafter section is not used", source)
    return config


def _server(top: Mapping[str, Any], base_dir: Path | None) -> ServerConfig | None:
    server = _section(top, "server", ServerConfig)
    template = server.chat_template if server is not None else None
    if server is None or template is None or "{{" in template or "{%" in template:
        return server  # no template, or Jinja text given inline
    return replace(server, chat_template=resolve_model_path(template, base_dir))


def _security(top: Mapping[str, Any], base_dir: Path | None) -> SecurityConfig:
    """`security` with its key paths made absolute against the YAML file's directory."""
    security = _section(top, "security", SecurityConfig) or SecurityConfig()
    base = base_dir or Path.cwd()
    paths: dict[str, Any] = {key: os.path.normpath(base / Path(value).expanduser())
                             for key in SecurityConfig.KEYS if isinstance(value := getattr(security, key), str)}
    return replace(security, **paths)


def _section(top: Mapping[str, Any], name: str, cls: type[_T]) -> _T | None:
    """Build one section; a section that is absent or null counts as omitted."""
    if top.get(name) is None:
        return None
    values = dict(_mapping(name, top[name]))
    _check_keys(name, values, cls)
    if name == "speculation" and values.get("tree") is not None:
        values["tree"] = _build_tree(values["tree"])
    return cls(**values)


def _build_tree(value: object) -> TreeConfig:
    """`speculation.tree` through TreeConfig, whose own messages (`tree.<key> ...`) gain the prefix."""
    from protocol.params import TreeConfig

    values = dict(_mapping("speculation.tree", value))
    _check_keys("speculation.tree", values, TreeConfig)
    for key in ("total_tokens", "depth", "top_k", "max_living_nodes", "max_living_depth"):
        if key in values:  # type only; TreeConfig owns the ranges
            check_int(f"speculation.tree.{key}", values[key])
    if values.get("static_paths") is not None:
        values["static_paths"] = _static_paths(values["static_paths"])
    try:
        return TreeConfig(**values)
    except ValueError as exc:
        message = str(exc)
        raise ConfigError(f"speculation.{message}" if message.startswith("tree.")
                          else f"speculation.tree: {message}") from exc


def _static_paths(value: object) -> tuple[tuple[int, ...], ...]:
    key = "speculation.tree.static_paths"
    if not isinstance(value, (list, tuple)) or not all(isinstance(path, (list, tuple)) for path in value):
        raise ConfigError(f"{key} must be a list of lists of child ranks like [[0], [1], [0, 0]], got {value!r}")
    return tuple(tuple(check_int(f"{key} entry", rank) for rank in path) for path in value)


def _mapping(key: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of keys to values, got {value!r}")
    return value


def _check_keys(prefix: str, values: Mapping[str, Any], cls: type[Any], exclude: tuple[str, ...] = ()) -> None:
    """Refuse keys that are not init fields of `cls`, and require fields that have no default."""
    known = {f.name: f for f in fields(cls) if f.init and f.name not in exclude}
    dotted = f"{prefix}." if prefix else ""
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {dotted}{close[0]}?)" if close else f" (known keys: {', '.join(known)})"
            raise ConfigError(f"unknown key {dotted}{key}{hint}")
    for name, spec in known.items():
        if name not in values and spec.default is MISSING and spec.default_factory is MISSING:
            raise ConfigError(f"missing required key {dotted}{name}")
