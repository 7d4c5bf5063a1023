"""The operator against kmock's emulated Kubernetes API, only for what a real API server will not
do on demand: answer a call with a 500, a 409 or not in time. Everything else about the
operator (phases, scaling, Events, the status subresource, RBAC, deletion, a restart, peering)
runs against a real kube-apiserver in tests/kubernetes/test_operator_server.py.

kmock stores an intercepted write anyway, so the failures are injected by `FaultyEmulator`
before kmock sees the request: a failed call changes nothing, as on a real server. The
operator is `main.serve` (every handler, its own Redis and PostgreSQL connections) in a thread
with its own event loop, like a separate process; its log records are collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp.web
import attrs
import kmock
import kopf
import pytest

from flashsale.config import Settings
from flashsale.operator.main import serve
from flashsale.waiting_room.services import Services
from flashsale.wiring import opened

NS = "shop"
FLASHSALES = "flashsale.io/v1alpha1/flashsales"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
TICK = 0.25
REQUEST_TIMEOUT = 0.5  # kopf's (and so the operator's own client's) request timeout here


@dataclass
class Fault:
    """The next `times` requests matching (method, plural, subresource) fail with `status`,
    or, with `delay`, are answered only after `delay` seconds (the client has given up)."""

    method: str
    plural: str
    subresource: str | None = None
    times: int = 1
    status: int = 500
    message: str = "injected"
    delay: float = 0.0
    hits: list[float] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, request: kmock.Request) -> bool:
        return (
            len(self.hits) < self.times
            and request.method == self.method
            and request.resource is not None
            and request.resource.plural == self.plural
            and (request.subresource or None) == self.subresource
        )


@attrs.define
class FaultyEmulator(kmock.KubernetesEmulator):
    faults: list[Fault] = attrs.field(factory=list, init=False)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        for fault in self.faults:
            if fault.matches(request):
                fault.hits.append(time.monotonic())
                fault.entered.set()
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                    break  # then served as usual, to a client that no longer listens
                return aiohttp.web.json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": fault.message,
                        "code": fault.status,
                    },
                    status=fault.status,
                )
        return await super()._handle(request)


@pytest.fixture
def k8s(kmock: FaultyEmulator) -> FaultyEmulator:
    kmock.resources.load_bundled()
    kmock.resources[FLASHSALES] = kmock.ResourceInfo(
        kind="FlashSale",
        singular="flashsale",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        subresources={"status"},
    )
    kmock.objects[HPAS, NS, "web"] = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": NS, "uid": "hpa-web", "annotations": {}},
        "spec": {
            "minReplicas": 2,
            "maxReplicas": 20,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        },
    }
    return kmock


pytestmark = pytest.mark.kmock(cls=FaultyEmulator)


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@contextlib.asynccontextmanager
async def operator(k8s: FaultyEmulator, settings: Settings) -> AsyncIterator[Collected]:
    """`flashsale operator` (main.serve) in a thread with its own event loop (kopf cancels
    every task of its loop when it stops, which would include kmock's handlers)."""
    settings = replace(
        settings,
        operator_namespace=NS,
        operator_tick_seconds=TICK,
        operator_liveness="",
        operator_peering="",
    )
    kopf_settings = kopf.OperatorSettings()
    # kmock cannot serve `GET /api/v1/namespaces` (the collection): kopf's run-time
    # observation of namespaces and CRDs is off; the operator serves the one namespace named
    kopf_settings.scanning.disabled = True
    kopf_settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    kopf_settings.networking.request_timeout = REQUEST_TIMEOUT
    stop = threading.Event()
    loop = asyncio.new_event_loop()
    collected = Collected()
    logging.getLogger().addHandler(collected)

    async def operate() -> None:
        async with opened(settings, pool_size=4) as services:
            await serve(
                services,
                kopf_settings=kopf_settings,
                stop_flag=stop,
                login=lambda **_: kopf.ConnectionInfo(server=str(k8s.url)),
            )

    main = loop.create_task(operate())
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        except BaseException as error:
            failure.append(error)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    try:
        yield collected
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 1.0)
        if thread.is_alive():  # a request cut short by the exit: stop as a SIGKILL would
            loop.call_soon_threadsafe(main.cancel)
            await asyncio.to_thread(thread.join, 10.0)
        logging.getLogger().removeHandler(collected)
        assert not thread.is_alive(), "the operator did not stop"
    assert not failure, failure


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "flashsale.io/v1alpha1",
        "kind": "FlashSale",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": secrets.token_hex(8),
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": spec,
    }


def spec_soon(**extra: Any) -> dict[str, Any]:
    """A sale opening in 30 minutes whose scaling window (an hour's lead) is on now."""
    opens = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
    spec: dict[str, Any] = {
        "saleId": f"k-{secrets.token_hex(4)}",
        "product": {"name": "Faults", "priceCents": 1000, "currency": "EUR"},
        "inventory": {"quantity": 50},
        "schedule": {
            "opensAt": opens.isoformat(),
            "closesAt": (opens + timedelta(hours=1)).isoformat(),
        },
        "scaling": {"target": {"name": "web"}, "replicas": 8, "leadSeconds": 3600},
    }
    spec.update(extra)
    return {k: v for k, v in spec.items() if v is not None}


async def apply(k8s: FaultyEmulator, obj: dict[str, Any]) -> None:
    path = f"/apis/flashsale.io/v1alpha1/namespaces/{NS}/flashsales"
    async with k8s.post(path, json=obj) as response:
        assert response.status < 300, await response.text()


async def eventually(
    check: Callable[[], Awaitable[Any] | Any], what: str, within: float = 15
) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


def status(k8s: FaultyEmulator, name: str) -> dict[str, Any]:
    return dict(dict(k8s.objects[FLASHSALES, NS, name]).get("status") or {})


def status_patches(k8s: FaultyEmulator, name: str) -> list[dict[str, Any]]:
    """The status patches the operator sent for `name`, in order."""
    return [
        r.data.get("status") or {}
        for r in k8s[kmock.resource(FLASHSALES)]
        if r.method == "PATCH" and r.subresource == "status" and r.name == name
    ]


def scaled_conditions(k8s: FaultyEmulator, name: str) -> list[dict[str, Any]]:
    return [
        c
        for patch in status_patches(k8s, name)
        for c in patch.get("conditions") or []
        if c["type"] == "Scaled"
    ]


async def test_a_failing_or_silent_scaling_target_is_a_condition_and_the_tick_goes_on(
    k8s: FaultyEmulator, services: Services
) -> None:
    """The HPA's API answers 500 twice, then does not answer in time twice: each tick says
    so in the Scaled condition and still writes the rest of the status; once the API
    answers, the HPA is raised."""
    broken = Fault("GET", "horizontalpodautoscalers", times=2, message="etcdserver: leader changed")
    silent = Fault("GET", "horizontalpodautoscalers", times=2, delay=3 * REQUEST_TIMEOUT)
    k8s.faults += [broken, silent]
    hpa = lambda: dict(k8s.objects[HPAS, NS, "web"])  # noqa: E731

    async with operator(k8s, services.settings) as log:
        await apply(k8s, manifest("fragile", spec_soon()))
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 8, "the HPA is raised")
        assert len(broken.hits) == 2 and len(silent.hits) == 2

    seen = [(c["status"], c["reason"], c["message"]) for c in scaled_conditions(k8s, "fragile")]
    assert seen[0] == (
        "False",
        "ApiError",
        f"HorizontalPodAutoscaler {NS}/web: HTTP 500: etcdserver: leader changed",
    ), seen
    timed_out = [s for s in seen if "no answer from" in s[2]]
    assert timed_out and timed_out[0][2].endswith("(timed out)"), seen
    assert seen[-1][:2] == ("True", "ScaledUp"), seen
    # the first tick wrote the phase and counters along with the failure
    first = next(p for p in status_patches(k8s, "fragile") if "phase" in p)
    assert first["phase"] == "Scheduled" and first["counters"]["stock"] == 50, first
    assert [c["reason"] for c in first["conditions"] if c["type"] == "Scaled"] == ["ApiError"]
    assert status(k8s, "fragile")["phase"] == "Scheduled"
    refused = [m for m in log.messages() if m.startswith("Kubernetes API refused GET")]
    assert refused and "HTTP 500: etcdserver: leader changed" in refused[0], refused


async def test_refused_status_writes_and_events_are_retried(
    k8s: FaultyEmulator, services: Services
) -> None:
    """The status subresource answers 409 three times and the Event API 500 once: the next
    ticks write the status (a refused write does not end the FlashSale's timer), the phase's
    Event is told once, after its status was written, and kopf posts again what got a 500."""
    conflict = Fault(
        "PATCH", "flashsales", "status", times=3, status=409, message="the object has been modified"
    )
    events = Fault("POST", "events", times=1)
    k8s.faults += [conflict, events]

    async with operator(k8s, services.settings) as log:
        await apply(k8s, manifest("contested", spec_soon(scaling=None)))
        await eventually(lambda: status(k8s, "contested").get("phase") == "Scheduled", "Scheduled")
        await eventually(lambda: len(events.hits) == 1 and posted(k8s), "the Event is posted")
        await asyncio.sleep(4 * TICK)  # more ticks: nothing more to write or to tell
        assert len(conflict.hits) == 3

    # the spec's Event posted twice (the first POST answered 500, kopf retried it), the
    # phase's once although its status write was refused three times
    assert posted(k8s) == ["Applied", "Applied", "Scheduled"], posted(k8s)
    assert status(k8s, "contested")["observedGeneration"] == 1
    refused = [m for m in log.messages() if "HTTP 409" in m]
    assert len(refused) == 3 and "status" in refused[0], refused


def posted(k8s: FaultyEmulator) -> list[str]:
    """The reasons of the Events the operator posted (kopf's own posts aside)."""
    return [
        r.data.get("reason")
        for r in k8s[kmock.resource("v1/events")]
        if r.method == "POST" and r.data.get("reason") != "Logging"
    ]


async def test_a_sale_deleted_while_its_tick_waits_on_the_api_is_released_at_once(
    k8s: FaultyEmulator, services: Services
) -> None:
    """The deletion arrives while a tick waits for a slow answer of the HPA's API, a tick with
    nothing to write: kopf releases the object only once the tick has ended, and looks again
    after `cancellation_polling` (60 s by default; the operator sets half a second)."""
    slow = Fault("GET", "horizontalpodautoscalers", delay=REQUEST_TIMEOUT / 2)
    hpa = lambda: dict(k8s.objects[HPAS, NS, "web"])  # noqa: E731
    async with operator(k8s, services.settings):
        await apply(k8s, manifest("brief", spec_soon()))
        await eventually(lambda: hpa()["spec"]["minReplicas"] == 8, "the HPA is raised")
        await eventually(lambda: "nextTransition" in status(k8s, "brief"), "a steady status")
        await asyncio.sleep(2 * TICK)
        k8s.faults.append(slow)  # the next tick's GET of the HPA: slow, then as before
        await asyncio.wait_for(slow.entered.wait(), 10)
        started = time.monotonic()
        async with k8s.delete(f"/apis/flashsale.io/v1alpha1/namespaces/{NS}/flashsales/brief"):
            pass
        await eventually(
            lambda: k8s.objects[FLASHSALES, NS, "brief"].deleted, "the FlashSale is gone", 20
        )
        assert time.monotonic() - started < 10
