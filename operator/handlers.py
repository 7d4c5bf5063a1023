"""The kopf handlers of the FlashSale operator, in one place.

- create / update / resume: the spec becomes a sale through `Sales.apply`, the path the admin
  API takes, so both refuse the same things with the same words. A spec that cannot work is a
  permanent error and an `Accepted=False` condition saying what to change.
- a timer, every `FLASHSALE_OPERATOR_TICK_SECONDS`: level-triggered, it derives everything
  from the clock, the spec and what Redis, PostgreSQL and the cluster hold: the phase, the
  pre-warm of the stock, the replicas on the scaling target, the counters in the status, and
  an Event when the phase changes. Nothing depends on what an earlier tick (or an earlier
  operator process) remembered.
- an index of every FlashSale's scaling window per target, so that sales overlapping on one
  target agree: the largest wish wins, whichever sale's timer runs.
- delete (a finalizer): the sale is closed, its figures archived in `sale_archive`, its Redis
  keys removed, and the scaling target restored if no other sale wants it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import kopf

from flashsale.operator import schedule
from flashsale.operator import status as st
from flashsale.operator.kube import Kube, KubeError, Login
from flashsale.operator.scaling import Scaler, ScalingError, Target
from flashsale.operator.spec import GROUP, PLURAL, VERSION, translate, validate
from flashsale.operator.spec import sale_id as sale_id_of
from flashsale.waiting_room.isolation import guarded
from flashsale.waiting_room.redis_client import text
from flashsale.waiting_room.room import NoSuchRoom
from flashsale.waiting_room.sale import Sale, ValidationError
from flashsale.waiting_room.sales import SaleConflict, SaleNotFound

if TYPE_CHECKING:
    from flashsale.waiting_room.services import Services

log = logging.getLogger(__name__)

INDEX = "flashsale_windows"
FINALIZER = "flashsale.io/finalizer"
CANCELLATION_POLLING_SECONDS = 0.5  # how often kopf looks whether a deleted sale's tick ended
_WRITABLE = (
    "name",
    "stock",
    "opens_at",
    "closes_at",
    "timezone",
    "seat_map",
    "per_shopper_limit",
    "hold_seconds",
    "price_cents",
    "currency",
    "batch_size",
    "batch_interval_ms",
    "max_active",
    "admission_ttl_seconds",
    "abandon_after_seconds",
    "identity_required",
    "pow_difficulty",
)
_PHASE_MESSAGES = {
    schedule.Phase.SCHEDULED: "scheduled: opens at {opens}",
    schedule.Phase.WARMING: "warming: stock pre-warmed ({remaining} available), pre-queue open",
    schedule.Phase.OPEN: "open: admitting shoppers ({waiting} waiting)",
    schedule.Phase.SOLD_OUT: "sold out: {sold} sold",
    schedule.Phase.CLOSED: "closed: {sold} of {stock} sold",
}


def namespaced(namespace: str | None) -> str:
    """kopf passes None for cluster-scoped objects; a FlashSale is namespaced."""
    if namespace is None:
        raise kopf.PermanentError("a FlashSale must live in a namespace")
    return namespace


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Memory:
    """What this process knows of one FlashSale between handler calls. Only conditions set by
    the change handlers live here (so the timer does not write back a stale copy); everything
    else is re-derived on every tick."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    accepted: dict[str, Any] | None = None
    sale_id: str | None = None
    deleted: bool = False  # archived: a tick still queued behind the deletion does nothing


class FlashSaleOperator:
    def __init__(
        self,
        services: Services,
        *,
        login: Login = kopf.login_via_client,
        tick_seconds: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.services = services
        self.sales = services.sales
        self.room = services.room
        self.stock = services.stock
        self.login = login
        self.kube = Kube(login)
        self.scaler = Scaler(self.kube)
        self.tick = tick_seconds
        self.clock = clock
        settings = services.settings
        self.default_target = (
            (settings.operator_default_target_kind, settings.operator_default_target)
            if settings.operator_default_target
            else None
        )
        self._memory: dict[str, _Memory] = {}

    # -- wiring ----------------------------------------------------------------------------

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Add every handler to `registry` (one registry per operator, or per test)."""
        resource = (GROUP, VERSION, PLURAL)
        kopf.on.login(registry=registry)(self.on_login)
        kopf.on.cleanup(registry=registry)(self.on_cleanup)
        kopf.index(*resource, registry=registry, id=INDEX)(self.index_windows)
        kopf.on.create(*resource, registry=registry, id="apply-created")(self.on_spec)
        kopf.on.update(*resource, registry=registry, id="apply-updated", field="spec")(self.on_spec)
        kopf.on.resume(*resource, registry=registry, id="apply-resumed")(self.on_spec)
        kopf.timer(
            *resource,
            registry=registry,
            id="tick",
            interval=self.tick,
            initial_delay=min(1.0, self.tick),
            backoff=self.tick,
        )(self.on_tick)
        kopf.on.delete(*resource, registry=registry, id="archive", backoff=max(1.0, self.tick))(
            self.on_delete
        )

    @staticmethod
    def configure(settings: kopf.OperatorSettings) -> kopf.OperatorSettings:
        """kopf's own bookkeeping under our prefix. Events are the operator's own (one per
        phase change, per applied or refused spec), not copies of its log lines. A FlashSale
        deleted while its tick runs is released once the tick ends: kopf looks again after
        `cancellation_polling`, 60 s by default, which held deletions that long."""
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="flashsale.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="flashsale.io", key="last-handled-spec"
        )
        settings.posting.loggers = False
        settings.background.cancellation_polling = CANCELLATION_POLLING_SECONDS
        return settings

    async def on_login(
        self, settings: kopf.OperatorSettings, **kwargs: Any
    ) -> kopf.ConnectionInfo | None:
        self.kube.settings = settings
        return await self.kube.login()

    async def on_cleanup(self, **_: Any) -> None:
        await self.kube.close()

    def _mem(self, uid: str) -> _Memory:
        return self._memory.setdefault(uid, _Memory())

    # -- the index of scaling windows ------------------------------------------------------

    def index_windows(
        self, namespace: str | None, name: str, spec: Any, meta: Any, **_: Any
    ) -> dict[tuple[str, str, str], schedule.Window]:
        """{(namespace, kind, name) of the target: this FlashSale's window}. An empty dict (not
        None, which kopf takes as "keep the old value") when it wishes for nothing: no
        scaling, a spec that cannot work, or on its way out."""
        namespace = namespaced(namespace)
        if meta.get("deletionTimestamp"):
            return {}
        try:
            plan = schedule.plan(spec, self.default_target)
        except ValidationError:
            return {}
        window = schedule.window(plan, name)
        if window is None or plan.scaling is None:
            return {}
        return {(namespace, plan.scaling.kind, plan.scaling.name): window}

    # -- spec -> sale ----------------------------------------------------------------------

    async def on_spec(
        self,
        name: str,
        namespace: str | None,
        uid: str,
        spec: Any,
        meta: Any,
        status: Any,
        body: kopf.Body,
        old: Any = None,
        new: Any = None,
        **kwargs: Any,
    ) -> None:
        namespace = namespaced(namespace)
        now = self.clock()
        generation = meta.get("generation")
        mem = self._mem(uid)
        async with mem.lock:
            accepted_id = mem.sale_id or status.get("saleId")
            try:
                api_body, wanted = validate(name, spec)
                if accepted_id and wanted.id != accepted_id:
                    raise ValidationError(
                        "spec.saleId",
                        f"cannot change once accepted (it is {accepted_id!r}); "
                        "create a new FlashSale for another sale",
                    )
                await self._claim(wanted.id, namespace, name)
            except ValidationError as error:
                await self._refuse(
                    namespace,
                    name,
                    body,
                    mem,
                    status,
                    "InvalidSpec",
                    str(error),
                    now,
                    generation,
                    accepted_id,
                )
            try:
                sale, what = await self._apply(wanted, api_body)
            except ValidationError as error:
                await self._refuse(
                    namespace,
                    name,
                    body,
                    mem,
                    status,
                    "Refused",
                    str(translate(error)),
                    now,
                    generation,
                    accepted_id,
                )
            except SaleConflict as error:
                await self._refuse(
                    namespace,
                    name,
                    body,
                    mem,
                    status,
                    "Refused",
                    f"{error}; create a new FlashSale with another spec.saleId",
                    now,
                    generation,
                    accepted_id,
                )
            mem.sale_id = sale.id
            mem.accepted = st.condition(
                "Accepted",
                True,
                "Applied",
                f"sale {sale.id} {what}",
                now=now,
                generation=generation,
            )
            if what != "unchanged":  # told now: a retry after a refused write finds it unchanged
                kopf.info(body, reason="Applied", message=f"sale {sale.id} {what}")
            await self._write_or_retry(
                namespace,
                name,
                status,
                {
                    "saleId": sale.id,
                    "observedGeneration": generation,
                    "conditions": st.merge_conditions(status.get("conditions"), mem.accepted),
                },
            )
        # a target this sale no longer scales goes back to what the other sales want of it
        if old is not None and new is not None:
            await self._release_old_target(namespace, name, old, new, kwargs.get(INDEX))

    async def _claim(self, sale_id: str, namespace: str, name: str) -> None:
        """One FlashSale per sale: the first to claim a sale id owns it (sale ids are global,
        FlashSales are per namespace)."""
        key = f"{self.room.keys(sale_id).base}:owner"
        me = f"{namespace}/{name}"
        await self.services.redis.set(key, me, nx=True)
        owner = text(await self.services.redis.get(key) or "")
        if owner != me:
            raise ValidationError(
                "spec.saleId",
                f"sale {sale_id!r} is already managed by FlashSale {owner}; set "
                "spec.saleId to another id",
            )

    async def _unclaim(self, name: str, namespace: str, spec: Any) -> None:
        try:
            candidate = sale_id_of(name, spec)
        except ValidationError:
            return
        key = f"{self.room.keys(candidate).base}:owner"
        if await self.services.redis.get(key) == f"{namespace}/{name}":
            await self.services.redis.delete(key)

    async def _apply(self, wanted: Sale, api_body: dict[str, Any]) -> tuple[Sale, str]:
        try:
            current = await self.sales.get(wanted.id)
        except SaleNotFound:
            current = None
        if current is not None and all(
            getattr(current, f) == getattr(wanted, f) for f in _WRITABLE
        ):
            await self.sales.ensure_room(wanted.id)
            return current, "unchanged"
        sale, created = await self.sales.apply(wanted.id, api_body)
        return sale, "created" if created else "updated"

    async def _refuse(
        self,
        namespace: str,
        name: str,
        body: kopf.Body,
        mem: _Memory,
        status: Any,
        reason: str,
        message: str,
        now: datetime,
        generation: int | None,
        accepted_id: str | None,
    ) -> NoReturn:
        """Say why in the status and an Event, and stop: kopf does not retry a permanent
        error until the spec changes."""
        mem.accepted = st.condition(
            "Accepted", False, reason, message, now=now, generation=generation
        )
        refused: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": st.merge_conditions(status.get("conditions"), mem.accepted),
        }
        if not accepted_id:
            refused["phase"] = schedule.Phase.INVALID.value
        await self._write_or_retry(namespace, name, status, refused)
        kopf.warn(body, reason=reason, message=message)
        raise kopf.PermanentError(message)

    async def _release_old_target(
        self, namespace: str, name: str, old: Any, new: Any, index: Any
    ) -> None:
        def target_of(spec: Any) -> Target | None:
            scaling = (spec or {}).get("scaling") or {}
            if not scaling:
                return None
            ref = scaling.get("target") or {}
            if not ref.get("name") and self.default_target is not None:
                ref = {"kind": self.default_target[0], "name": self.default_target[1]}
            if not ref.get("name"):
                return None
            return Target(namespace, ref.get("kind") or "HorizontalPodAutoscaler", ref["name"])

        before, after = target_of(old), target_of(new)
        if before is not None and before != after:
            await self._scale(before, index, exclude=name)

    # -- the tick --------------------------------------------------------------------------

    async def on_tick(
        self,
        name: str,
        namespace: str | None,
        uid: str,
        spec: Any,
        meta: Any,
        status: Any,
        body: kopf.Body,
        **kwargs: Any,
    ) -> None:
        namespace = namespaced(namespace)
        now = self.clock()
        mem = self._mem(uid)
        async with mem.lock:
            if mem.deleted or meta.get("deletionTimestamp"):
                return
            # one FlashSale whose Redis shard is down or slow is logged and counted, and
            # never holds this object's lock (nor the deletion behind it) past the timeout
            await guarded(
                "operator",
                mem.sale_id or status.get("saleId") or name,
                self.services.settings.sale_timeout_seconds,
                lambda: self._tick(
                    name, namespace, spec, meta, status, body, mem, now, kwargs.get(INDEX)
                ),
            )

    async def _tick(
        self,
        name: str,
        namespace: str,
        spec: Any,
        meta: Any,
        status: Any,
        body: kopf.Body,
        mem: _Memory,
        now: datetime,
        index: Any,
    ) -> None:
        conditions = st.merge_conditions(status.get("conditions"), mem.accepted)
        sale_id = mem.sale_id or status.get("saleId")
        if not sale_id:  # not accepted (yet): the change handlers say why
            accepted = st.get_condition(conditions, "Accepted")
            if accepted is not None and accepted.get("status") == "False":
                await self._write(
                    namespace,
                    name,
                    status,
                    {"phase": schedule.Phase.INVALID.value, "conditions": conditions},
                )
            return
        try:
            sale = await self.sales.get(sale_id)
        except SaleNotFound:
            log.warning(
                "sale missing from PostgreSQL; waiting for the spec to be re-applied",
                extra={"sale": sale_id, "flashsale": f"{namespace}/{name}"},
            )
            return
        try:
            plan = schedule.plan(spec, self.default_target)
        except ValidationError:  # a refused change: the sale runs on what it had
            plan = schedule.Plan(
                sale.opens_at, sale.closes_at, timedelta(seconds=schedule.PREWARM_LEAD_SECONDS)
            )
        plan = plan.with_times(sale.opens_at, sale.closes_at)

        figures, sold_out, warm = await self._figures(sale)
        decision = schedule.decide(plan, now, sold_out=sold_out, closed_at=sale.closed_at)

        if decision.prewarm and not warm:
            result = await self.stock.prewarm(sale)
            log.info("pre-warmed", extra={"sale": sale.id, "outcome": result["outcome"]})
            figures, sold_out, warm = await self._figures(sale)
            decision = schedule.decide(plan, now, sold_out=sold_out, closed_at=sale.closed_at)
        warm_condition = (
            st.condition("Warm", True, "Prewarmed", "stock is loaded in Redis", now=now)
            if warm
            else st.condition(
                "Warm",
                False,
                "NotYet",
                f"stock is pre-warmed at {st.iso(plan.prewarm_at)}",
                now=now,
            )
        )

        scaled = None
        if plan.scaling is not None:
            target = Target(namespace, plan.scaling.kind, plan.scaling.name)
            scaled = await self._scale(target, index, now=now)
        conditions = st.merge_conditions(
            conditions, warm_condition, scaled, drop=() if scaled else ("Scaled",)
        )

        phase = decision.phase.value
        old_phase = status.get("phase")
        transitions = dict(status.get("transitions") or {})
        if phase != old_phase:
            transitions.setdefault(phase, st.iso(now))
        wanted = {
            "saleId": sale.id,
            "phase": phase,
            "phaseSince": st.iso(now) if phase != old_phase else status.get("phaseSince"),
            "counters": figures,
            "schedule": {
                "prewarmAt": st.iso(plan.prewarm_at),
                "opensAt": st.iso(plan.opens_at),
                "closesAt": st.iso(sale.closed_at or plan.closes_at),
                **(
                    {
                        "scaleFrom": st.iso(plan.scaling.start),
                        "scaleUntil": st.iso(plan.scaling.end),
                    }
                    if plan.scaling
                    else {}
                ),
            },
            "nextTransition": (
                {"event": decision.next_event, "at": st.iso(decision.next_at)}
                if decision.next_at
                else None
            ),
            "transitions": transitions,
            "conditions": conditions,
        }
        if not await self._write(namespace, name, status, wanted):
            return  # the next tick writes it, and only then tells of a new phase
        if phase != old_phase:
            message = _PHASE_MESSAGES.get(decision.phase, phase).format(
                opens=st.iso(plan.opens_at), **figures
            )
            kopf.info(body, reason=phase, message=f"{sale.id} {message}")
            log.info("phase", extra={"sale": sale.id, "phase": phase, "was": old_phase})

    async def _write_or_retry(
        self, namespace: str, name: str, status: Any, wanted: dict[str, Any]
    ) -> None:
        """`_write` for the change handlers: a refused write has kopf call the handler again
        (its work is idempotent: a spec applied twice is "unchanged")."""
        if not await self._write(namespace, name, status, wanted):
            raise kopf.TemporaryError("the status was not written", delay=max(1.0, self.tick))

    async def _write(self, namespace: str, name: str, status: Any, wanted: dict[str, Any]) -> bool:
        """Write what changed of the status through the status subresource; False when the
        API server refused or did not answer (the next tick tries again, from the status it
        then sees). Every handler writes the status this way, with the operator's own client,
        rather than through kopf's patch: kopf 1.45 ends an object's timer for good when the
        patch it applies after the timer fails (a 409, a 500, a timeout), so the sale would
        never move on, and it drops a change handler's failed status patch without calling
        the handler again."""
        changes = st.changes(status, wanted)
        if not changes:
            return True
        try:
            await self.kube.patch(
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
                {"status": changes},
            )
        except KubeError as error:
            log.warning(
                "status not written; the next tick tries again",
                extra={"flashsale": f"{namespace}/{name}", "error": str(error)},
            )
            return False
        return True

    async def _scale(
        self, target: Target, index: Any, *, exclude: str | None = None, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """Bring `target` to what every FlashSale on it wants now; returns a Scaled condition."""
        now = now or self.clock()
        windows = [
            w
            for w in (
                index.get((target.namespace, target.kind, target.name), [])
                if index is not None
                else []
            )
            if w.sale != exclude
        ]
        wanted, wishers = schedule.wanted_replicas(windows, now)
        try:
            outcome = await self.scaler.reconcile(target, wanted, wishers)
        except ScalingError as error:
            return st.condition("Scaled", False, error.reason, error.message, now=now)
        except KubeError as error:
            return st.condition("Scaled", False, "ApiError", f"{target}: {error}", now=now)
        if outcome.raised:
            return st.condition("Scaled", True, "ScaledUp", f"{target}: {outcome.message}", now=now)
        return st.condition("Scaled", False, "Baseline", f"{target}: {outcome.message}", now=now)

    async def _figures(self, sale: Sale) -> tuple[dict[str, int], bool, bool]:
        """The counters for the status, the room's sold-out flag and whether stock is warm.
        Stock figures come from Redis once warm (live), else from PostgreSQL."""
        try:
            room = await self.room.counters(sale.id)
        except NoSuchRoom:
            room = None
        inventory = await self.services.redis.hgetall(self.room.keys(sale.id).inventory)
        warm = "warmed" in inventory
        if warm:
            stock, held, sold = (int(inventory.get(k) or 0) for k in ("stock", "held", "sold"))
            remaining = int(inventory.get("avail") or 0)
        else:
            row = await self.services.pool.fetchrow(
                "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale.id
            )
            stock, held, sold = (
                (row["stock"], row["held"], row["sold"]) if row else (sale.stock, 0, 0)
            )
            remaining = stock - held - sold
        figures = {
            "waiting": room.waiting if room else 0,
            "admitted": room.admitted_total if room else 0,
            "active": room.active if room else 0,
            "held": held,
            "sold": sold,
            "remaining": remaining,
            "stock": stock,
        }
        return figures, bool(room and room.sold_out), warm

    # -- deletion --------------------------------------------------------------------------

    async def on_delete(
        self,
        name: str,
        namespace: str | None,
        uid: str,
        spec: Any,
        status: Any,
        body: kopf.Body,
        **kwargs: Any,
    ) -> None:
        namespace = namespaced(namespace)
        now = self.clock()
        mem = self._mem(uid)
        async with mem.lock:
            try:
                plan = schedule.plan(spec, self.default_target)
            except ValidationError:
                plan = None
            if plan is not None and plan.scaling is not None:
                target = Target(namespace, plan.scaling.kind, plan.scaling.name)
                scaled = await self._scale(target, kwargs.get(INDEX), exclude=name, now=now)
                if scaled and scaled["reason"] == "ApiError":
                    raise kopf.TemporaryError(scaled["message"], delay=max(1.0, self.tick))
            sale_id = mem.sale_id or status.get("saleId")
            if sale_id:
                await self._archive(sale_id, namespace, name, uid, status, now)
            else:  # never accepted: let go of a sale id it may have claimed
                await self._unclaim(name, namespace, spec)
            mem.deleted = True

    async def _archive(
        self, sale_id: str, namespace: str, name: str, uid: str, status: Any, now: datetime
    ) -> None:
        backlog = await self.stock.stream_backlog(sale_id)
        if backlog["lag"] or backlog["pending"]:
            raise kopf.TemporaryError(
                f"{backlog['lag']} order entries unread and {backlog['pending']} pending: "
                "waiting for the persister to write them to PostgreSQL before removing the "
                "sale's Redis state",
                delay=max(1.0, self.tick),
            )
        try:
            sale = await self.sales.close(sale_id)
        except SaleNotFound:
            sale = None
        if sale is not None:
            figures, _, _ = await self._figures(sale)
            async with self.services.pool.acquire() as conn:
                inventory = await conn.fetchrow(
                    "SELECT stock, held, sold FROM sale_inventory WHERE sale_id = $1", sale_id
                )
                orders = await conn.fetch(
                    "SELECT status, count(*) AS orders, coalesce(sum(quantity), 0) AS units"
                    " FROM orders WHERE sale_id = $1 GROUP BY status",
                    sale_id,
                )
                archive = {
                    "sale": sale.admin(now),
                    "inventory": dict(inventory) if inventory else None,
                    "orders": {
                        r["status"]: {"orders": r["orders"], "units": int(r["units"])}
                        for r in orders
                    },
                    "last_counters": figures,
                    "flashsale": {
                        "namespace": namespace,
                        "name": name,
                        "uid": uid,
                        "phase": status.get("phase"),
                        "transitions": dict(status.get("transitions") or {}),
                    },
                    "archived_by": "flashsale-operator",
                }
                await conn.execute(
                    "INSERT INTO sale_archive (sale_id, figures) VALUES ($1, $2::jsonb)"
                    " ON CONFLICT (sale_id) DO UPDATE SET figures = EXCLUDED.figures,"
                    " archived_at = now()",
                    sale_id,
                    json.dumps(archive, default=str),
                )
        removed = await self.room.remove(sale_id)
        self.services.forget(sale_id)
        log.info("sale archived", extra={"sale": sale_id, "redis_keys_removed": removed})
