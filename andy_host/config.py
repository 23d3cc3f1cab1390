"""Typed configuration per role, merged in one place.

Precedence: defaults < TOML file < ``ANDY_HOST_<SECTION>_<OPTION>`` environment < flags.
Every option is documented in ``config.example.toml`` (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from andy_host.errors import ConfigError

ENV_PREFIX = "ANDY_HOST_"
DEFAULT_BACKEND_URLS = {"ollama": "http://127.0.0.1:11434", "llamacpp": "http://127.0.0.1:8081"}


@dataclass(slots=True)
class LogConfig:
    format: str = "auto"  # auto | console | json
    level: str = "info"


@dataclass(slots=True)
class CoordinatorConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    db: str = ""
    database_url: str = ""
    redis_url: str = ""
    replica_secret: str = ""
    replica_url: str = ""
    replica_id: str = ""
    directory_interval: float = 1.0
    directory_ttl: float = 5.0
    replica_connect_timeout: float = 3.0
    redis_timeout: float = 2.0
    redis_retry: float = 2.0
    database_timeout: float = 5.0
    database_pool_size: int = 10
    max_body_bytes: int = 4 * 1024 * 1024
    max_frame_bytes: int = 8 * 1024 * 1024
    heartbeat_interval: float = 10.0
    host_timeout: float = 30.0
    ttft_timeout: float = 60.0
    token_timeout: float = 30.0
    answer_timeout: float = 300.0
    request_timeout: float = 600.0
    queue_timeout: float = 30.0
    max_queue: int = 256
    max_queue_per_client: int = 32
    max_attempts: int = 3
    eject_after: int = 3
    eject_base: float = 5.0
    eject_max: float = 300.0
    shutdown_grace: float = 10.0
    require_keys: bool = True
    anon_per_minute: int = 10
    anonymous_endpoints: list[str] = field(default_factory=list)
    default_model: str = ""
    default_embedding_model: str = ""
    rate_window: float = 60.0
    default_daily_limit: int = 1000
    default_per_minute: int = 60
    trusted_proxies: list[str] = field(default_factory=list)
    admin_token: str = ""
    kick_seconds: float = 600.0
    enrolment: str = "open"
    max_hosts_per_address: int = 16
    credit_tokens: int = 100_000
    credit_daily: int = 1000
    credit_per_minute: int = 30
    flush_interval: float = 1.0
    max_content_chars: int = 1_000_000
    max_choices: int = 4
    max_logprobs: int = 16_384
    cors_origins: list[str] = field(default_factory=list)
    cors_max_age: int = 600
    metrics_access: str = "public"
    metrics_max_hosts: int = 100
    metrics_max_models: int = 100
    dashboard_max_rows: int = 200
    dashboard_cache_seconds: float = 1.0
    metrics_cache_seconds: float = 1.0
    leaderboard_size: int = 10
    leaderboard_refresh: float = 30.0
    hello_timeout: float = 5.0
    max_connecting: int = 256
    max_connecting_per_address: int = 8
    admission_queue: int = 4096
    admission_wait: float = 15.0
    http_idle_timeout: float = 15.0
    body_timeout: float = 30.0
    max_answer_chars: int = 4 * 1024 * 1024
    answer_chars_per_token: int = 64
    max_job_buffer_chars: int = 1024 * 1024
    max_models_per_host: int = 128
    max_known_models: int = 1000
    known_model_ttl: float = 7 * 86400.0
    busy_host_timeout: float = 3.0
    host_send_timeout: float = 10.0
    new_hosts_per_hour: int = 30
    quarantine_score: float = 6.0
    release_after: int = 3
    check_probation: int = 5
    probation_every: int = 2
    check_every: int = 10
    quarantine_check_interval: float = 30.0
    check_max_tokens: int = 24
    reference_ttl: float = 3600.0
    check_doubts: int = 4
    check_parallel: int = 4
    check_top_logprobs: int = 20
    check_opening_tokens: int = 8
    check_scan_tokens: int = 256
    check_pass_dependence: float = 0.0
    check_fail_dependence: float = -0.6
    check_doubt_hit_rate: float = 0.9
    check_min_hit_rate: float = 0.75
    check_doubt_miss_run: int = 2
    check_max_miss_run: int = 8
    check_doubt_end: float = 0.15
    check_min_end: float = 0.005
    check_traffic_kept: int = 64
    check_traffic_chars: int = 8 * 1024 * 1024
    probation_share: float = 0.25
    trusted_share: float = 0.2
    address_group_v4: int = 32
    address_group_v6: int = 64


@dataclass(slots=True)
class BackendConfig:
    kind: str = "ollama"  # ollama | llamacpp
    url: str = ""
    managed: bool = False
    model: str = ""
    model_name: str = ""
    llama_server: str = ""
    ctx_size: int = 8192  # a managed llama-server's context per slot: tokens one request may hold
    parallel: int = 2  # its slots (requests at once); it gets -c ctx_size*parallel -np parallel
    threads: int = 0
    chat_template: str = ""
    embeddings: bool = True
    extra_args: list[str] = field(default_factory=list)
    startup_timeout: float = 180.0
    restart_backoff_min: float = 0.5
    restart_backoff_max: float = 30.0
    connect_timeout: float = 5.0
    request_timeout: float = 600.0
    poll_interval: float = 30.0

    def effective_url(self) -> str:
        return (self.url or DEFAULT_BACKEND_URLS.get(self.kind, "")).rstrip("/")


@dataclass(slots=True)
class AgentConfig:
    coordinator: list[str] = field(default_factory=list)  # tried in turn; join requires one
    name: str = ""
    token: str = ""
    max_concurrency: int = 2
    heartbeat_interval: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    connect_timeout: float = 10.0
    drain_timeout: float = 30.0
    state_dir: str = ""
    ca_file: str = ""

    def effective_name(self) -> str:
        return self.name or socket.gethostname()


@dataclass(slots=True)
class ControlsConfig:
    share_models: list[str] = field(default_factory=list)
    deny_models: list[str] = field(default_factory=list)
    min_free_vram_mib: int = 0
    max_foreign_vram_mib: int = 0
    max_temperature: int = 0
    active_hours: str = ""
    check_interval: float = 1.0


@dataclass(slots=True)
class Config:
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS: dict[str, type] = {
    "coordinator": CoordinatorConfig,
    "agent": AgentConfig,
    "backend": BackendConfig,
    "controls": ControlsConfig,
    "log": LogConfig,
}


def default_config_path() -> Path:
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "andy-host" / "config.toml"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(section: str, key: str, value: Any, kind: Any, source: str) -> Any:
    where = f"{section}.{key} (from {source})"
    origin = typing.get_origin(kind)
    if origin is types.UnionType:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError(value)
            return str(value)
        if origin is list:
            if isinstance(value, str):
                return [v for v in value.replace(",", " ").split() if v]
            if isinstance(value, list):
                return [str(v) for v in value]
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    raise ConfigError(f"{where}: unsupported option type")


def _apply(config: Config, section: str, values: Mapping[str, Any], source: str) -> None:
    target = getattr(config, section)
    types_ = _field_types(type(target))
    for key, value in values.items():
        if value is None:
            continue
        if key not in types_:
            raise ConfigError(f"unknown option {section}.{key} in {source}; see config.example.toml")
        setattr(target, key, _coerce(section, key, value, types_[key], source))


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Merge defaults, the TOML file, the environment and the flags into one Config."""
    config = Config()
    file_path = Path(path).expanduser() if path else default_config_path()
    if path and not file_path.is_file():
        raise ConfigError(f"config file {file_path} does not exist")
    if file_path.is_file():
        try:
            data = tomllib.loads(file_path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file_path} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"unknown section [{section}] in {file_path}")
            _apply(config, section, values, str(file_path))
    environ = os.environ if env is None else env
    for section, cls in SECTIONS.items():
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        values = {
            name: environ[prefix + name.upper()]
            for name in _field_types(cls)
            if prefix + name.upper() in environ
        }
        _apply(config, section, values, "environment")
    for section, values in (flags or {}).items():
        _apply(config, section, values, "command line")
    validate(config)
    return config


def validate(config: Config) -> None:
    if config.backend.kind not in ("ollama", "llamacpp"):
        raise ConfigError(f"backend.kind must be 'ollama' or 'llamacpp', not {config.backend.kind!r}")
    if config.backend.managed and config.backend.kind != "llamacpp":
        raise ConfigError("backend.managed = true needs backend.kind = 'llamacpp'")
    if config.backend.managed and not config.backend.model:
        raise ConfigError(
            "backend.managed = true needs backend.model (a GGUF path, 'smollm2-135m' or 'gemma3-270m')"
        )
    validate_backend(config.backend)
    if config.agent.max_concurrency < 1:
        raise ConfigError("agent.max_concurrency must be at least 1")
    for url in config.agent.coordinator:
        if not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ConfigError(f"agent.coordinator must be URLs such as http://pool.example:8080, not {url!r}")
    if config.agent.ca_file:
        from andy_host.agent.tls import client_context

        client_context(config.agent.ca_file)  # a missing or unreadable file is a ConfigError now
    if config.coordinator.metrics_access not in ("public", "admin", "off"):
        raise ConfigError("coordinator.metrics_access must be public, admin or off")
    if config.coordinator.metrics_max_hosts < 0:
        raise ConfigError("coordinator.metrics_max_hosts must be 0 or more")
    if config.coordinator.enrolment not in ("open", "token"):
        raise ConfigError("coordinator.enrolment must be 'open' or 'token'")
    if config.coordinator.redis_url and len(config.coordinator.replica_secret) < 16:
        raise ConfigError("coordinator.redis_url (replicated mode) needs coordinator.replica_secret: "
                          "at least 16 characters, the same on every replica")
    _validate_bounds(config.coordinator)
    anonymous_limits(config.coordinator)  # a malformed entry is a ConfigError now
    for proxy in config.coordinator.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"coordinator.trusted_proxies: {proxy!r} is not an address or network") from None
    from andy_host.agent.controls import parse_hours

    parse_hours(config.controls.active_hours)
    if config.log.format not in ("auto", "console", "json"):
        raise ConfigError("log.format must be auto, console or json")


# What ``coordinator.anonymous_endpoints`` may open to clients without a key, besides
# chat (always open, at ``anon_per_minute``): each name covers these endpoints.
ANONYMOUS_GROUPS: dict[str, tuple[str, ...]] = {
    "embeddings": ("embeddings", "ollama_embed"),  # /v1/embeddings, /api/embed, /api/embeddings
    "models": ("models", "ollama_models"),  # /v1/models, /api/tags, /api/ps, /api/show
    "pool_status": ("pool_status",),  # the public totals of /api/andy/pool_status (never its host list)
}
ANONYMOUS_DEFAULTS = {"pool_status": 60}  # what anonymous_endpoints' entries add to or override


def anonymous_limits(c: CoordinatorConfig) -> dict[str, tuple[str, int]]:
    """``anonymous_endpoints`` over :data:`ANONYMOUS_DEFAULTS` read: endpoint -> (its group,
    requests per rate_window per client address); ``NAME=0`` closes a default. Raises
    ConfigError for an entry that is not ``NAME=N``."""
    groups = dict(ANONYMOUS_DEFAULTS)
    for entry in c.anonymous_endpoints:
        name, _, number = entry.partition("=")
        name = name.strip()
        if name not in ANONYMOUS_GROUPS:
            raise ConfigError(f"coordinator.anonymous_endpoints: {name!r} is not one of "
                              f"{', '.join(sorted(ANONYMOUS_GROUPS))} (chat is always open, at anon_per_minute)")
        try:
            groups[name] = int(number)
        except ValueError:
            groups[name] = -1
        if groups[name] < 0:
            raise ConfigError(f"coordinator.anonymous_endpoints: {entry!r} must be NAME=N with N requests per "
                              "rate_window per client address (0 closes it)")
    return {endpoint: (name, limit) for name, limit in groups.items() if limit > 0
            for endpoint in ANONYMOUS_GROUPS[name]}


# A managed llama-server's context per slot (backend.ctx_size, join/demo --ctx-size) and
# slots (backend.parallel): llama-server caps a slot at the model's training context.
CTX_SIZE_BOUNDS = (256, 1 << 20)
PARALLEL_BOUNDS = (1, 256)


def validate_backend(b: BackendConfig) -> None:
    """The managed llama-server's sizes (also for ``demo``, which builds its config itself)."""
    low, high = CTX_SIZE_BOUNDS
    if not low <= b.ctx_size <= high:
        raise ConfigError(f"backend.ctx_size (--ctx-size) is the context per slot, in tokens: between {low} and "
                          f"{high}, not {b.ctx_size} (8192 holds a Mindcraft system prompt and some turns)")
    if not PARALLEL_BOUNDS[0] <= b.parallel <= PARALLEL_BOUNDS[1]:
        raise ConfigError(f"backend.parallel must be between {PARALLEL_BOUNDS[0]} and {PARALLEL_BOUNDS[1]} slots, "
                          f"not {b.parallel}")


def _validate_bounds(c: CoordinatorConfig) -> None:
    from andy_host.protocol import MAX_FRAME_CEILING

    if not 64 * 1024 <= c.max_frame_bytes <= MAX_FRAME_CEILING:
        raise ConfigError(f"coordinator.max_frame_bytes must be between 65536 and {MAX_FRAME_CEILING}")
    if c.max_answer_chars >= c.max_frame_bytes:
        raise ConfigError("coordinator.max_answer_chars must be below max_frame_bytes (continuations carry it)")
    if not 0 <= c.address_group_v4 <= 32 or not 0 <= c.address_group_v6 <= 128:
        raise ConfigError("coordinator.address_group_v4 must be 0-32 and address_group_v6 0-128")
    positive = ("hello_timeout", "http_idle_timeout", "body_timeout", "busy_host_timeout", "max_connecting",
                "max_connecting_per_address", "max_job_buffer_chars", "max_models_per_host", "max_known_models",
                "answer_chars_per_token", "max_choices", "max_logprobs", "admission_wait", "directory_interval",
                "directory_ttl", "replica_connect_timeout", "redis_timeout", "redis_retry", "database_pool_size",
                "database_timeout",
                "kick_seconds", "leaderboard_size", "leaderboard_refresh")
    for name in positive:
        if getattr(c, name) <= 0:
            raise ConfigError(f"coordinator.{name} must be positive")
    for name in ("metrics_max_hosts", "metrics_max_models", "dashboard_max_rows", "dashboard_cache_seconds",
                 "metrics_cache_seconds"):
        if getattr(c, name) < 0:
            raise ConfigError(f"coordinator.{name} must not be negative")
    if c.leaderboard_size > 100:
        raise ConfigError("coordinator.leaderboard_size must be at most 100")
    _validate_checks(c)


def _validate_checks(c: CoordinatorConfig) -> None:
    from andy_host.protocol import MAX_TOP_LOGPROBS

    for name in ("check_every", "check_doubts", "check_parallel", "check_opening_tokens", "check_scan_tokens",
                 "check_max_miss_run", "check_doubt_miss_run", "check_traffic_chars",
                 "check_traffic_kept", "check_probation", "probation_every"):
        if getattr(c, name) < 1:
            raise ConfigError(f"coordinator.{name} must be at least 1")
    if not 1 <= c.check_top_logprobs <= MAX_TOP_LOGPROBS:
        raise ConfigError(f"coordinator.check_top_logprobs must be 1-{MAX_TOP_LOGPROBS}")
    for name in ("check_min_hit_rate", "check_doubt_hit_rate", "check_min_end", "check_doubt_end",
                 "probation_share", "trusted_share"):
        if not 0 <= getattr(c, name) <= 1:
            raise ConfigError(f"coordinator.{name} must be between 0 and 1")
    if c.check_fail_dependence > c.check_pass_dependence:
        raise ConfigError("coordinator.check_fail_dependence must not be above check_pass_dependence")


def save_agent_config(config: Config, path: str | Path) -> Path:
    """Write the host's effective configuration (agent, backend, log) as TOML."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "agent": dataclasses.asdict(config.agent),
        "backend": dataclasses.asdict(config.backend),
        "controls": dataclasses.asdict(config.controls),
        "log": dataclasses.asdict(config.log),
    }
    target.write_text(tomli_w.dumps(data))
    return target
