"""The shop's settings: one typed object per container config, each default written once.

:class:`Settings` is a frozen dataclass with one field per top-level key of config.yml
(the field is the key in lower case: ``RPC_TIMEOUT`` -> ``settings.rpc_timeout``). It is
built from a nameko container config by :meth:`Settings.from_config` and, for the code
that runs in a container, once per config object by :func:`settings_of` (cached like
``gateway.authz.gate``). Every value is checked and converted there: a value that is not
what its setting takes raises ``ValueError`` naming the key (``RPC_TIMEOUT must be a
number of seconds, not 'abc'``), and :class:`SettingsCheck`, a dependency of every service
and of the gateway, does it in its ``setup()``: a process with a bad setting refuses to
start instead of failing on its first request.

Where each default lives (written once):

* a setting the shop's own code reads has its default **here** (``setting(KEY, parse,
  default)``), and config.yml names it with an empty placeholder, ``KEY: ${KEY:}``: the
  environment variable when it is set, else nothing, which means "the default". A config
  dict without the key (a test's ``{**rabbit_config, "RPC_TIMEOUT": 0.5}``) gets the same
  default.
* a setting nameko itself or the tooling (`make up`, `make setup`, the supervisor
  configuration, the bench) reads straight from config.yml -- ``AMQP_URI``, ``DB_URIS``,
  ``max_workers``, ``WEB_SERVER_ADDRESS``, ``LOGGING``, ``GATEWAY_ADDRESSES``,
  ``PROCESSES``... -- keeps its default in **config.yml** (``${VAR:default}``) and has
  none here (``setting(KEY, parse)``: absent is ``None``, or nameko's own default for
  ``max_workers``).

tests/test_settings.py holds both rules: config.yml's keys and these fields are the same
set, every code default has its empty placeholder and no config.yml default has a code
twin, and no ``config.get("KEY", default)`` is left in common/ or the services.
"""

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Self

from nameko.constants import DEFAULT_MAX_WORKERS
from nameko.dependency_providers import Config as NamekoConfig
from nameko.extensions import DependencyProvider

IN_CONFIG_YML = object()  # marker: this setting's default is written in config.yml

TRACING_EXPORTERS = ("none", "otlp", "console")
AUTH_MODES = ("off", "tokens", "jwt")
SIGNUP_RULES = ("open", "admin")


# -- parsers: (key, raw value) -> typed value, or ValueError naming the key -------------


def _number(key, value, what):
    if isinstance(value, bool):
        raise ValueError(f"{key} must be {what}, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {what}, not {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"{key} must be {what}, not {value!r}")
    return number


def seconds(key: str, value: Any) -> float:
    """A duration in seconds, >= 0 (an interval of 0 disables its timer)."""
    number = _number(key, value, "a number of seconds")
    if number < 0:
        raise ValueError(f"{key} must be a number of seconds >= 0, not {value!r}")
    return number


def timeout(key: str, value: Any) -> float:
    """A bound in seconds, > 0."""
    number = _number(key, value, "a number of seconds")
    if number <= 0:
        raise ValueError(f"{key} must be a number of seconds > 0, not {value!r}")
    return number


def _whole(key, value, what, minimum):
    number = _number(key, value, what)
    if number != int(number):
        raise ValueError(f"{key} must be {what}, not {value!r}")
    if number < minimum:
        raise ValueError(f"{key} must be {what} >= {minimum}, not {value!r}")
    return int(number)


def milliseconds(key: str, value: Any) -> int:
    """A whole number of milliseconds, >= 0 (PostgreSQL: 0 is no limit)."""
    return _whole(key, value, "a whole number of milliseconds", 0)


def count(key: str, value: Any) -> int:
    """A whole number >= 1."""
    return _whole(key, value, "a whole number", 1)


def ratio(key: str, value: Any) -> float:
    number = _number(key, value, "a number between 0 and 1")
    if not 0 <= number <= 1:
        raise ValueError(f"{key} must be a number between 0 and 1, not {value!r}")
    return number


def text(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError(f"{key} must be a string, not {value!r}")
    return str(value).strip()


def one_of(*choices: str, lower: bool = True) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        chosen = text(key, value)
        chosen = chosen.lower() if lower else chosen
        if chosen not in choices:
            raise ValueError(f"{key} must be one of {choices}, not {chosen!r}")
        return chosen

    return parse


def comma_list(key: str, value: Any) -> tuple[str, ...]:
    """A YAML list, or ``"a,b"`` from the environment (YAML may make it a number)."""
    raw = value if isinstance(value, list) else str(value).split(",")
    return tuple(str(item).strip() for item in raw if str(item).strip())


def timeouts_by_service(key: str, value: Any) -> MappingProxyType[str, float]:
    """``{service: seconds}``; an entry left empty keeps its default."""
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping of service to seconds, not {value!r}")
    bounds = dict(_DEFAULTS[key])
    for service, bound in value.items():
        if bound not in (None, ""):
            bounds[str(service)] = timeout(f"{key}.{service}", bound)
    return MappingProxyType(bounds)


def mapping(key: str, value: Any) -> MappingProxyType[Any, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping, not {value!r}")
    return MappingProxyType(dict(value))


def anything(key: str, value: Any) -> Any:
    return value


def setting(key: str, parse: Callable[[str, Any], Any], default: Any = IN_CONFIG_YML) -> Any:
    """A field of :class:`Settings`: its config key, its parser and its default (none:
    config.yml holds it)."""
    _DEFAULTS[key] = default
    metadata = {"key": key, "parse": parse}
    if isinstance(default, dict):
        frozen = MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=None if default is IN_CONFIG_YML else default, metadata=metadata)


_DEFAULTS: dict[str, Any] = {}  # key -> default (or IN_CONFIG_YML), filled by setting()


@dataclass(frozen=True)
class Settings:
    """Every setting of config.yml, typed (module docstring). Units are in the names of
    the keys: ``*_MS`` are whole milliseconds, other durations float seconds."""

    # -- broker and databases (nameko, nameko-sqlalchemy and the tooling read these) --
    amqp_uri: str | None = setting("AMQP_URI", text)
    rabbit_management_uri: str | None = setting("RABBIT_MANAGEMENT_URI", text)
    heartbeat: int | None = setting("HEARTBEAT", count)  # nameko reads it itself
    db_uris: MappingProxyType | None = setting("DB_URIS", mapping)
    db_admin_uri: str | None = setting("DB_ADMIN_URI", text)
    db_read_uris: MappingProxyType | None = setting("DB_READ_URIS", mapping)
    max_workers: int = setting("max_workers", count)  # nameko's own default when absent
    # -- database bounds (common/db.py, common/replica.py) --
    db_replica_timeout_ms: int = setting("DB_REPLICA_TIMEOUT_MS", milliseconds, 500)
    db_replica_retry_seconds: float = setting("DB_REPLICA_RETRY_SECONDS", seconds, 5.0)
    db_lock_timeout_ms: int = setting("DB_LOCK_TIMEOUT_MS", milliseconds, 3000)
    db_statement_timeout_ms: int = setting("DB_STATEMENT_TIMEOUT_MS", milliseconds, 4000)
    db_idle_in_transaction_timeout_ms: int = setting(
        "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", milliseconds, 30000
    )
    db_ping_idle_seconds: float = setting("DB_PING_IDLE_SECONDS", seconds, 2.0)
    # -- RPC bounds (common/rpc.py) --
    rpc_timeout: float = setting("RPC_TIMEOUT", timeout, 5.0)
    rpc_timeouts: MappingProxyType = setting("RPC_TIMEOUTS", timeouts_by_service, {"orders": 20.0})
    # -- recovery jobs (orders/service.py, products/reconcile.py) --
    recovery_interval: float = setting("RECOVERY_INTERVAL", seconds, 5.0)
    recovery_age: float = setting("RECOVERY_AGE", seconds, 30.0)
    hold_check_interval: float = setting("HOLD_CHECK_INTERVAL", seconds, 3.0)
    hold_confirm_age: float = setting("HOLD_CONFIRM_AGE", seconds, 5.0)
    hold_check_batch: int = setting("HOLD_CHECK_BATCH", count, 500)
    # -- gateway HTTP (gateway/http.py, gateway/dependencies.py) --
    web_server_address: str | None = setting("WEB_SERVER_ADDRESS", text)
    gateway_addresses: list | None = setting("GATEWAY_ADDRESSES", anything)
    gateway_processes: int | None = setting("GATEWAY_PROCESSES", count)
    web_listen_backlog: int = setting("WEB_LISTEN_BACKLOG", count, 1024)
    http_idle_timeout: float = setting("HTTP_IDLE_TIMEOUT", timeout, 10.0)
    http_max_body_bytes: int = setting("HTTP_MAX_BODY_BYTES", count, 64 * 1024)
    ready_timeout: float = setting("READY_TIMEOUT", timeout, 2.0)
    # -- admission control (gateway/admission.py) --
    admission_reads: int = setting("ADMISSION_READS", count, 10)
    admission_writes: int = setting("ADMISSION_WRITES", count, 10)
    admission_queue_seconds: float = setting("ADMISSION_QUEUE_SECONDS", timeout, 1.0)
    admission_max_waiting: int = setting("ADMISSION_MAX_WAITING", count, 1000)
    # -- auth (gateway/auth.py, gateway/authz.py) --
    auth_mode: str = setting("AUTH_MODE", one_of("", *AUTH_MODES), "")
    api_tokens: tuple = setting("API_TOKENS", comma_list, ())
    auth_jwt_jwks: str = setting("AUTH_JWT_JWKS", text, "")
    auth_jwt_jwks_timeout: float = setting("AUTH_JWT_JWKS_TIMEOUT", timeout, 5.0)
    auth_jwt_jwks_cache_seconds: float = setting("AUTH_JWT_JWKS_CACHE_SECONDS", seconds, 300.0)
    auth_jwt_jwks_refetch_seconds: float = setting("AUTH_JWT_JWKS_REFETCH_SECONDS", seconds, 30.0)
    auth_jwt_secret: str = setting("AUTH_JWT_SECRET", text, "")
    auth_jwt_public_key: str = setting("AUTH_JWT_PUBLIC_KEY", text, "")
    auth_jwt_algorithms: tuple = setting("AUTH_JWT_ALGORITHMS", comma_list, ())
    auth_jwt_issuer: str = setting("AUTH_JWT_ISSUER", text, "shop")
    auth_jwt_audience: str = setting("AUTH_JWT_AUDIENCE", text, "shop-api")
    auth_jwt_leeway: float = setting("AUTH_JWT_LEEWAY", seconds, 0.0)
    auth_signup: str = setting("AUTH_SIGNUP", one_of(*SIGNUP_RULES), "open")
    auth_jwt_dev_secret_path: str = setting("AUTH_JWT_DEV_SECRET_PATH", text, "")
    # -- pagination (common/pagination.py, orders/service.py) --
    page_default_limit: int = setting("PAGE_DEFAULT_LIMIT", count, 100)
    page_max_limit: int = setting("PAGE_MAX_LIMIT", count, 1000)
    page_max_lines: int = setting("PAGE_MAX_LINES", count, 2000)
    # -- operations listener (common/ops_http.py; the ports: scripts/supervisor.py) --
    ops_http_address: str = setting("OPS_HTTP_ADDRESS", text, "")
    ops_http_host: str | None = setting("OPS_HTTP_HOST", text)
    ops_http_ports: MappingProxyType | None = setting("OPS_HTTP_PORTS", mapping)
    # -- traces (common/tracing.py) --
    tracing_exporter: str = setting("TRACING_EXPORTER", one_of(*TRACING_EXPORTERS), "none")
    tracing_sample_ratio: float = setting("TRACING_SAMPLE_RATIO", ratio, 1.0)
    # -- `make up` and logging (scripts/supervisor.py, nameko) --
    processes: MappingProxyType | None = setting("PROCESSES", mapping)
    logging: MappingProxyType | None = setting("LOGGING", mapping)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The settings of a container ``config`` (a dict, config.yml loaded the nameko
        way, or a test's partial one): a key that is absent, ``None`` or ``""`` takes its
        default; a value its setting does not take raises ValueError naming the key."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            key, parse = spec.metadata["key"], spec.metadata["parse"]
            raw = config.get(key)
            if raw is None or raw == "":
                if parse is timeouts_by_service:  # a mapping: its per-service defaults
                    values[spec.name] = parse(key, {})
                elif spec.name == "max_workers":
                    values[spec.name] = DEFAULT_MAX_WORKERS  # what nameko itself uses
                continue  # the field's default
            values[spec.name] = parse(key, raw)
        return cls(**values)

    @staticmethod
    def keys() -> list[str]:
        """Every setting's config key, in config.yml's order."""
        return [spec.metadata["key"] for spec in fields(Settings)]

    @staticmethod
    def default(key: str) -> Any:
        """``key``'s default, or :data:`IN_CONFIG_YML` when config.yml holds it."""
        return _DEFAULTS[key]

    def value(self, key: str) -> Any:
        """The value of the setting ``key`` (``"RPC_TIMEOUT"``)."""
        if key not in _DEFAULTS:
            raise KeyError(f"{key} is not a setting (common/settings.py)")
        return getattr(self, key.lower())

    def call_bound(self, target_service: str) -> float:
        """Seconds a call to ``target_service`` may take: ``RPC_TIMEOUTS[target_service]``,
        else ``RPC_TIMEOUT``."""
        return self.rpc_timeouts.get(target_service) or self.rpc_timeout

    def longest_call_bound(self) -> float:
        """The longest bound of any call, in seconds."""
        return max([self.rpc_timeout, *self.rpc_timeouts.values()])


_built: dict[
    int, tuple[Any, "Settings"]
] = {}  # id(config) -> (config, Settings): one per container config
MAX_BUILT = 256  # configs remembered (a process has one per container; tests make more)


def settings_of(config: Mapping[str, Any] | Settings) -> Settings:
    """The :class:`Settings` of ``config``, built on first use and then shared by every
    extension and worker of the container (a bad value raises ValueError)."""
    if isinstance(config, Settings):
        return config
    if isinstance(config, ContainerConfig):  # a worker's view: its container's config
        config = config.container_config
    entry = _built.get(id(config))
    if entry is None or entry[0] is not config:
        if len(_built) >= MAX_BUILT:
            del _built[next(iter(_built))]
        entry = _built[id(config)] = (config, Settings.from_config(config))
    return entry[1]


class ContainerConfig(Mapping[str, Any]):
    """A read-only view of a container's config, the same object for every worker."""

    def __init__(self, container_config: Mapping[str, Any]) -> None:
        self.container_config = container_config

    def __getitem__(self, key: str) -> Any:
        return self.container_config[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.container_config)

    def __len__(self) -> int:
        return len(self.container_config)

    def copy(self) -> dict[str, Any]:
        return dict(self.container_config)


class Config(NamekoConfig):
    """nameko's ``Config`` dependency, giving every worker the same read-only view of the
    container config (:class:`ContainerConfig`) instead of a fresh copy per worker: what
    is built once per config (:func:`settings_of`, ``gateway.authz.gate``) then is built
    once per container, not once per request."""

    def setup(self) -> None:
        self.view = ContainerConfig(self.container.config)

    def get_dependency(self, worker_ctx: Any) -> ContainerConfig:
        return self.view


class SettingsCheck(DependencyProvider):
    """Builds the container's :class:`Settings` in ``setup()``, so a process whose config
    has a malformed value refuses to start, with the key in the message; workers get the
    settings object (``self.settings.rpc_timeout``)."""

    def setup(self) -> None:
        self.settings = settings_of(self.container.config)

    def get_dependency(self, worker_ctx: Any) -> Settings:
        return self.settings
