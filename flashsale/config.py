"""Every setting FlashSale reads, from environment variables, in one place.

The README's settings table is checked against `SETTINGS` by a test, so the two cannot drift.
Each process reads its settings once at start-up (`Settings.from_env()`); nothing else in the
code base touches `os.environ`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """An environment variable holds a value FlashSale cannot use."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    help: str


def _s(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"setting": Setting(env, default, help)})


@dataclass(frozen=True)
class Settings:
    redis_url: str = _s(
        "REDIS_URL", "redis://127.0.0.1:6379/0", "Redis holding the waiting rooms and hot state."
    )
    redis_cluster: str = _s(
        "FLASHSALE_REDIS_CLUSTER",
        "auto",
        "Whether `REDIS_URL` names one node of a Redis Cluster: `true`, `false`, or `auto` "
        "(asks the server at start-up, `INFO cluster`; so Redis must answer then).",
    )
    redis_max_connections: int = _s(
        "FLASHSALE_REDIS_MAX_CONNECTIONS",
        200,
        "Redis connections one process may open; beyond that, commands wait for a free one.",
    )
    redis_pool_timeout_seconds: float = _s(
        "FLASHSALE_REDIS_POOL_TIMEOUT_SECONDS",
        5.0,
        "How long a command waits for a free Redis connection before failing.",
    )
    redis_command_timeout_seconds: float = _s(
        "FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS",
        5.0,
        "How long any Redis command (the hot path's scripts and polls, and every other) waits "
        "for an answer, or a connection to open, before it fails.",
    )
    database_url: str = _s(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/flashsale",
        "PostgreSQL, the system of record.",
    )
    database_schema: str = _s(
        "FLASHSALE_DATABASE_SCHEMA", "public", "PostgreSQL schema holding FlashSale's tables."
    )
    redis_prefix: str = _s(
        "FLASHSALE_REDIS_PREFIX",
        "fs",
        "Prefix of every Redis key, so several installs can share one Redis.",
    )
    admin_token: str = _s(
        "FLASHSALE_ADMIN_TOKEN", "", "Bearer token for `/admin/*`. Empty disables the admin API."
    )
    token_key: str = _s(
        "FLASHSALE_TOKEN_KEY",
        "",
        "HMAC key signing queue tickets and admission tokens (at least 32 characters). "
        "Empty: a random key per process, fit only for a single-process trial.",
    )
    token_key_previous: str = _s(
        "FLASHSALE_TOKEN_KEY_PREVIOUS",
        "",
        "The key before the last rotation; tokens it signed are still accepted.",
    )
    host: str = _s("FLASHSALE_HOST", "127.0.0.1", "Address the API listens on.")
    port: int = _s("FLASHSALE_PORT", 8000, "Port the API listens on.")
    workers: int = _s("FLASHSALE_WORKERS", 2, "Uvicorn worker processes for the API.")
    forwarded_allow_ips: str = _s(
        "FLASHSALE_FORWARDED_ALLOW_IPS",
        "127.0.0.1",
        "Proxies trusted to report the client's address in `X-Forwarded-For`: addresses or "
        "networks, comma-separated (`*`: every hop, so the client's own first entry counts). "
        "The API walks the header from the right past them.",
    )
    status_cache_ms: int = _s(
        "FLASHSALE_STATUS_CACHE_MS",
        250,
        "How long an API process reuses a sale's admission frontier before re-reading Redis.",
    )
    max_body_bytes: int = _s(
        "FLASHSALE_MAX_BODY_BYTES", 16384, "Largest request body a shopper endpoint accepts."
    )
    max_admin_body_bytes: int = _s(
        "FLASHSALE_MAX_ADMIN_BODY_BYTES",
        2_000_000,
        "Largest request body an admin endpoint accepts (seat maps can be large).",
    )
    join_limit_per_visitor: int = _s(
        "FLASHSALE_JOIN_LIMIT_PER_VISITOR", 10, "Joins one visitor may make per rate window."
    )
    join_limit_per_address: int = _s(
        "FLASHSALE_JOIN_LIMIT_PER_ADDRESS",
        600,
        "Joins one client address may make per rate window (shared NATs carry many shoppers).",
    )
    rate_window_seconds: int = _s(
        "FLASHSALE_RATE_WINDOW_SECONDS", 10, "Length of the join rate-limit window."
    )
    join_buckets: int = _s(
        "FLASHSALE_JOIN_BUCKETS",
        16384,
        "Redis hashes a sale's visitor index is spread over; keep visitors/buckets under 128 "
        "so Redis stores them compactly.",
    )
    cookie_secure: bool = _s(
        "FLASHSALE_COOKIE_SECURE", False, "Mark the visitor cookie `Secure` (set it behind HTTPS)."
    )
    identity_jwks_url: str = _s(
        "FLASHSALE_IDENTITY_JWKS_URL",
        "",
        "The shop's identity provider's JWKS (http or https URL): sales with "
        "`identity.required` take a place per signed-in shopper (JWT on join).",
    )
    identity_jwks_file: str = _s(
        "FLASHSALE_IDENTITY_JWKS_FILE",
        "",
        "The same JWKS as a file (e.g. a mounted Secret), instead of the URL.",
    )
    identity_issuer: str = _s(
        "FLASHSALE_IDENTITY_ISSUER",
        "",
        "The `iss` every shopper JWT must carry (required with a JWKS).",
    )
    identity_audience: str = _s(
        "FLASHSALE_IDENTITY_AUDIENCE",
        "",
        "The `aud` every shopper JWT must carry (required with a JWKS).",
    )
    identity_algorithms: str = _s(
        "FLASHSALE_IDENTITY_ALGORITHMS",
        "RS256,ES256",
        "JWT signature algorithms accepted (comma-separated; asymmetric ones only).",
    )
    identity_jwks_ttl_seconds: float = _s(
        "FLASHSALE_IDENTITY_JWKS_TTL_SECONDS",
        300.0,
        "How long the JWKS is cached before it is read again.",
    )
    identity_jwks_cooldown_seconds: float = _s(
        "FLASHSALE_IDENTITY_JWKS_COOLDOWN_SECONDS",
        10.0,
        "A JWT naming a key not in the cached JWKS re-reads it at most once per this long "
        "(key rotation without letting made-up key ids hammer the provider).",
    )
    identity_key: str = _s(
        "FLASHSALE_IDENTITY_KEY",
        "",
        "HMAC key turning a shopper's issuer and subject into their visitor id (at least 32 "
        "characters). Empty: FLASHSALE_TOKEN_KEY's current key (then rotating that key during "
        "a sale gives signed-in shoppers new places: set this one in production).",
    )
    admitter_tick_ms: int = _s(
        "FLASHSALE_ADMITTER_TICK_MS", 100, "How often the admitter looks for a batch that is due."
    )
    admitter_refresh_seconds: float = _s(
        "FLASHSALE_ADMITTER_REFRESH_SECONDS",
        5.0,
        "How often the admitter re-reads the list of live sales from PostgreSQL.",
    )
    payment_provider: str = _s(
        "FLASHSALE_PAYMENT_PROVIDER",
        "simulated",
        "Payment provider: `simulated` (approves or declines by payment token; outages and "
        "slowness are switched on it).",
    )
    payment_timeout_seconds: float = _s(
        "FLASHSALE_PAYMENT_TIMEOUT_SECONDS",
        5.0,
        "How long a call to the payment provider may take.",
    )
    breaker_threshold: int = _s(
        "FLASHSALE_BREAKER_THRESHOLD",
        5,
        "Payment-provider failures in a row, each on a different order, that open the circuit "
        "breaker.",
    )
    breaker_reset_seconds: float = _s(
        "FLASHSALE_BREAKER_RESET_SECONDS",
        10.0,
        "How long an open breaker refuses calls before letting one trial call through.",
    )
    simulated_payment_latency_ms: int = _s(
        "FLASHSALE_SIMULATED_PAYMENT_LATENCY_MS",
        0,
        "Latency the simulated payment provider adds to each call.",
    )
    prewarm_lead_seconds: int = _s(
        "FLASHSALE_PREWARM_LEAD_SECONDS",
        300,
        "The admitter pre-warms a sale's stock this long before it opens (if nothing did).",
    )
    persister_batch: int = _s(
        "FLASHSALE_PERSISTER_BATCH", 500, "Stream entries the persister writes per transaction."
    )
    persister_claim_idle_ms: int = _s(
        "FLASHSALE_PERSISTER_CLAIM_IDLE_MS",
        15_000,
        "Entries pending this long on a silent consumer are taken over by another persister.",
    )
    persister_max_deliveries: int = _s(
        "FLASHSALE_PERSISTER_MAX_DELIVERIES",
        5,
        "Deliveries after which an entry that keeps failing goes to the dead-letter stream.",
    )
    sweep_interval_ms: int = _s(
        "FLASHSALE_SWEEP_INTERVAL_MS",
        1000,
        "How often the persister looks for expired holds to release.",
    )
    sale_timeout_seconds: float = _s(
        "FLASHSALE_SALE_TIMEOUT_SECONDS",
        10.0,
        "Longest one sale's share of an admitter, persister or operator tick may take; past it "
        "that sale is given up for the tick (logged, counted in flashsale_sale_failures), so a "
        "sale whose Redis shard is down or slow never holds up the others.",
    )
    metrics_port: int = _s(
        "FLASHSALE_METRICS_PORT",
        9100,
        "Port of `/metrics` for background roles (admitter, persister); 0 turns it off.",
    )
    reconcile_interval_seconds: float = _s(
        "FLASHSALE_RECONCILE_INTERVAL_SECONDS",
        30.0,
        "How often the persister compares each warm sale's stock in Redis and PostgreSQL "
        "(metric flashsale_stock_mismatch); 0 turns it off.",
    )
    operator_namespace: str = _s(
        "FLASHSALE_OPERATOR_NAMESPACE",
        "",
        "Namespaces whose FlashSales `flashsale operator` handles (comma-separated); empty: "
        "every namespace.",
    )
    operator_peering: str = _s(
        "FLASHSALE_OPERATOR_PEERING",
        "",
        "kopf peering object the operator coordinates through, so only one operator acts at a "
        "time; empty: standalone (run one replica).",
    )
    operator_priority: int = _s(
        "FLASHSALE_OPERATOR_PRIORITY",
        0,
        "With peering: this operator's priority; the live one of highest priority acts, the "
        "others pause (equal priorities pause each other), e.g. 100 for one run by hand to "
        "take over from the cluster's.",
    )
    operator_liveness: str = _s(
        "FLASHSALE_OPERATOR_LIVENESS",
        "http://0.0.0.0:8080/healthz",
        "Liveness endpoint the operator serves; empty turns it off.",
    )
    operator_tick_seconds: float = _s(
        "FLASHSALE_OPERATOR_TICK_SECONDS",
        5.0,
        "How often the operator re-derives each FlashSale's phase, pre-warm, scaling and counters.",
    )
    operator_default_target: str = _s(
        "FLASHSALE_OPERATOR_DEFAULT_TARGET",
        "",
        "HPA or Deployment the operator scales for a FlashSale that names no "
        "spec.scaling.target (the chart sets its own API HPA); empty: none.",
    )
    operator_default_target_kind: str = _s(
        "FLASHSALE_OPERATOR_DEFAULT_TARGET_KIND",
        "HorizontalPodAutoscaler",
        "Kind of that default target: HorizontalPodAutoscaler or Deployment.",
    )
    log_level: str = _s("FLASHSALE_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = _s("FLASHSALE_LOG_JSON", True, "Structured JSON log lines (else plain text).")
    access_log: bool = _s(
        "FLASHSALE_ACCESS_LOG",
        False,
        "One log line per API request: request_id, method, route template, status, "
        "duration_ms, client.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        source: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            setting: Setting = f.metadata["setting"]
            raw = source.get(setting.env)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(setting, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for key in (self.token_key, self.token_key_previous):
            if key and len(key) < 32:
                raise SettingsError("FLASHSALE_TOKEN_KEY(_PREVIOUS) must be at least 32 characters")
        self._validate_identity()
        if not self.redis_prefix.replace("-", "").replace("_", "").isalnum():
            raise SettingsError("FLASHSALE_REDIS_PREFIX may hold letters, digits, '-' and '_' only")
        if not self.database_schema.replace("_", "").isalnum():
            raise SettingsError("FLASHSALE_DATABASE_SCHEMA may hold letters, digits and '_' only")
        if self.redis_cluster not in ("auto", "true", "false"):
            raise SettingsError("FLASHSALE_REDIS_CLUSTER must be auto, true or false")
        if self.operator_tick_seconds <= 0:
            raise SettingsError("FLASHSALE_OPERATOR_TICK_SECONDS must be positive")
        if self.operator_liveness:
            self.liveness_address()
        if self.reconcile_interval_seconds < 0:
            raise SettingsError("FLASHSALE_RECONCILE_INTERVAL_SECONDS must not be negative")
        for name in (
            "workers",
            "status_cache_ms",
            "join_buckets",
            "rate_window_seconds",
            "redis_command_timeout_seconds",
            "sale_timeout_seconds",
        ):
            if getattr(self, name) < 0 or (name != "status_cache_ms" and getattr(self, name) == 0):
                env = next(f.metadata["setting"].env for f in fields(self) if f.name == name)
                raise SettingsError(f"{env} must be positive")

    def _validate_identity(self) -> None:
        if self.identity_key and len(self.identity_key) < 32:
            raise SettingsError("FLASHSALE_IDENTITY_KEY must be at least 32 characters")
        if self.identity_jwks_url and self.identity_jwks_file:
            raise SettingsError(
                "set FLASHSALE_IDENTITY_JWKS_URL or FLASHSALE_IDENTITY_JWKS_FILE, not both"
            )
        if self.identity_jwks_url and not self.identity_jwks_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError("FLASHSALE_IDENTITY_JWKS_URL must be an http or https URL")
        if self.identity_configured and not (self.identity_issuer and self.identity_audience):
            raise SettingsError(
                "with a JWKS, FLASHSALE_IDENTITY_ISSUER and FLASHSALE_IDENTITY_AUDIENCE are "
                "required: a token from another issuer or for another audience must not pass"
            )
        unsafe = [a for a in self.identity_algorithm_list if a not in ASYMMETRIC_ALGORITHMS]
        if unsafe or not self.identity_algorithm_list:
            raise SettingsError(
                f"FLASHSALE_IDENTITY_ALGORITHMS may name only {', '.join(ASYMMETRIC_ALGORITHMS)}"
                f" (refused: {', '.join(unsafe) or 'none given'}): a shared-secret or 'none' "
                "algorithm would let anyone holding the public key mint tokens"
            )
        if self.identity_jwks_ttl_seconds <= 0 or self.identity_jwks_cooldown_seconds < 0:
            raise SettingsError(
                "FLASHSALE_IDENTITY_JWKS_TTL_SECONDS must be positive and "
                "FLASHSALE_IDENTITY_JWKS_COOLDOWN_SECONDS not negative"
            )

    @property
    def identity_configured(self) -> bool:
        """Whether an identity provider is set, so sales may require a signed-in shopper."""
        return bool(self.identity_jwks_url or self.identity_jwks_file)

    @property
    def identity_algorithm_list(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.identity_algorithms.split(",") if a.strip())

    def identity_hash_key(self) -> bytes:
        """The key of visitor ids derived from identities (see FLASHSALE_IDENTITY_KEY)."""
        return (self.identity_key or self.token_key or _process_key()).encode()

    def liveness_address(self) -> tuple[str, int]:
        """(host, port) of FLASHSALE_OPERATOR_LIVENESS: kopf serves plain http only."""
        parts = urlsplit(self.operator_liveness)
        try:
            port = parts.port or 80
        except ValueError:
            port = -1
        if parts.scheme != "http" or not parts.hostname or port < 0:
            raise SettingsError(
                f"FLASHSALE_OPERATOR_LIVENESS={self.operator_liveness!r} is not "
                "http://HOST:PORT/PATH (kopf serves plain http only); empty turns it off"
            )
        return parts.hostname, port

    def signing_keys(self) -> tuple[bytes, ...]:
        """Current key first, then the previous one; a random key when none is configured."""
        current = self.token_key or _process_key()
        keys = [current.encode()]
        if self.token_key_previous:
            keys.append(self.token_key_previous.encode())
        return tuple(keys)


# JWT algorithms a shop's identity provider may sign with: public-key ones only, so holding
# the JWKS (public) never lets anyone mint a token (no HS256, no "none")
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_PROCESS_KEY: list[str] = []


def _process_key() -> str:
    if not _PROCESS_KEY:
        _PROCESS_KEY.append(secrets.token_urlsafe(32))
    return _PROCESS_KEY[0]


def _parse(setting: Setting, raw: str) -> Any:
    kind = type(setting.default)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise SettingsError(f"{setting.env}={raw!r} is not a valid {kind.__name__}") from None
    return raw


SETTINGS: tuple[Setting, ...] = tuple(f.metadata["setting"] for f in fields(Settings))
