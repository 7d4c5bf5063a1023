"""`flashsale operator`: kopf with the handlers, on the services the wiring opened."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from flashsale.config import Settings
from flashsale.operator import health
from flashsale.operator.handlers import FlashSaleOperator
from flashsale.operator.kube import Kube, KubeError, KubeUnavailable, Login
from flashsale.waiting_room.services import Services

log = logging.getLogger(__name__)

PEERINGS = "/apis/kopf.dev/v1"


def namespaces(setting: str) -> list[str]:
    """FLASHSALE_OPERATOR_NAMESPACE: empty for every namespace, else comma-separated names (or
    kopf's glob patterns)."""
    return [n.strip() for n in setting.split(",") if n.strip()]


def operator_kwargs(settings: Settings) -> dict[str, Any]:
    """How kopf runs: which namespaces, peering (its object and this operator's priority) or
    standalone, the liveness endpoint."""
    chosen = namespaces(settings.operator_namespace)
    return {
        "clusterwide": not chosen,
        "namespaces": chosen,
        "standalone": not settings.operator_peering,
        "peering_name": settings.operator_peering or None,
        "priority": settings.operator_priority,
        "liveness_endpoint": settings.operator_liveness or None,
    }


def peering_paths(settings: Settings) -> list[tuple[str, str]]:
    """(what, API path) of each peering object kopf will use: a ClusterKopfPeering when the
    operator serves every namespace, else a KopfPeering in each namespace named plainly
    (patterns such as `shop-*` are matched at run time and cannot be checked up front)."""
    name = settings.operator_peering
    if not name:
        return []
    chosen = namespaces(settings.operator_namespace)
    if not chosen:
        return [(f"ClusterKopfPeering {name}", f"{PEERINGS}/clusterkopfpeerings/{name}")]
    return [
        (f"KopfPeering {ns}/{name}", f"{PEERINGS}/namespaces/{ns}/kopfpeerings/{name}")
        for ns in chosen
        if not set(ns) & set("*?[]!")
    ]


async def check_cluster(kube: Kube, settings: Settings) -> None:
    """Fail at start, with one line, where kopf would otherwise wait or retry in silence: no
    credentials, an API server that does not answer, or (with peering) a peering object
    missing, for which kopf pauses the operator for good."""
    version = await kube.check()
    for what, path in peering_paths(settings):
        try:
            found = await kube.get(path)
        except KubeError as error:
            raise KubeUnavailable(
                f"cannot read the peering object {what} ({error}); the operator's RBAC must "
                "allow get on it (operator/RBAC.md)"
            ) from error
        if found is None:
            raise KubeUnavailable(
                f"FLASHSALE_OPERATOR_PEERING={settings.operator_peering} but there is no "
                f"{what} (kopf would pause the operator until one appears); create it and "
                "kopf's peering CRDs (the chart does with operator.peering.enabled) or unset "
                "FLASHSALE_OPERATOR_PEERING"
            )
    log.info("Kubernetes API reachable", extra={"version": version})


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
    try:
        await check_cluster(operator.kube, settings)
    except BaseException:
        await operator.kube.close()
        raise
    registry = kopf.OperatorRegistry()
    operator.register(registry)
    health.register(registry, services)
    kwargs = operator_kwargs(settings)
    log.info(
        "operator starting",
        extra={
            "namespaces": kwargs["namespaces"] or "all",
            "peering": kwargs["peering_name"],
            "priority": kwargs["priority"] if kwargs["peering_name"] else None,
            "liveness": kwargs["liveness_endpoint"],
        },
    )
    await kopf.operator(
        registry=registry,
        settings=FlashSaleOperator.configure(kopf_settings or kopf.OperatorSettings()),
        stop_flag=stop_flag,
        **kwargs,
    )
