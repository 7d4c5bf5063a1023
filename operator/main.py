"""`flashsale operator`: kopf with the handlers, on the services the wiring opened."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from flashsale.config import Settings
from flashsale.operator.handlers import FlashSaleOperator
from flashsale.operator.kube import Login
from flashsale.waiting_room.services import Services

log = logging.getLogger(__name__)


def namespaces(setting: str) -> list[str]:
    """FLASHSALE_OPERATOR_NAMESPACE: empty for every namespace, else comma-separated names (or
    kopf's glob patterns)."""
    return [n.strip() for n in setting.split(",") if n.strip()]


def operator_kwargs(settings: Settings) -> dict[str, Any]:
    """How kopf runs: which namespaces, peering or standalone, the liveness endpoint."""
    chosen = namespaces(settings.operator_namespace)
    return {
        "clusterwide": not chosen,
        "namespaces": chosen,
        "standalone": not settings.operator_peering,
        "peering_name": settings.operator_peering or None,
        "liveness_endpoint": settings.operator_liveness or None,
    }


async def serve(
    services: Services,
    *,
    login: Login = kopf.login_via_client,
    kopf_settings: kopf.OperatorSettings | None = None,
    stop_flag: Any = None,
) -> None:
    """Run until SIGTERM/SIGINT (or `stop_flag`, an asyncio or threading Event, is set)."""
    settings = services.settings
    operator = FlashSaleOperator(services, login=login, tick_seconds=settings.operator_tick_seconds)
    registry = kopf.OperatorRegistry()
    operator.register(registry)
    kwargs = operator_kwargs(settings)
    log.info(
        "operator starting",
        extra={
            "namespaces": kwargs["namespaces"] or "all",
            "peering": kwargs["peering_name"],
            "liveness": kwargs["liveness_endpoint"],
        },
    )
    await kopf.operator(
        registry=registry,
        settings=FlashSaleOperator.configure(kopf_settings or kopf.OperatorSettings()),
        stop_flag=stop_flag,
        **kwargs,
    )
