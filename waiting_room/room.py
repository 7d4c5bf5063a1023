"""The waiting room of every sale, over Redis: join, status, leave and batch admission.

State per waiter is tiny (one visitor-index entry in a bucketed hash, and bits in bitmaps),
so a million waiters fit in a few tens of megabytes. A poll normally reads nothing from
Redis: the room's frontier comes from a per-process cache refreshed every
`status_cache_ms`, and a heartbeat bit is written only once per heartbeat slice.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from redis.typing import EncodableT, FieldT

from flashsale.config import Settings
from flashsale.waiting_room.keys import (
    HEARTBEAT_SLICES,
    SaleKeys,
    heartbeat_slice,
    heartbeat_slices,
)
from flashsale.waiting_room.pow import Proof
from flashsale.waiting_room.redis_client import RedisClient, remove_matching
from flashsale.waiting_room.scripts import Scripts
from flashsale.waiting_room.shuffle import Permutation
from flashsale.waiting_room.status import Outcome, RoomView, State, Status, decide
from flashsale.waiting_room.tokens import ADMISSION, TICKET, Claims, Signer

if TYPE_CHECKING:
    from flashsale.waiting_room.sale import Sale


class NoSuchRoom(Exception):
    """Redis holds no room for this sale (never installed, or Redis lost it)."""


@dataclass(slots=True)  # not frozen: built on every poll, 3x as fast
class JoinResult:
    outcome: str  # ok | rate_limited | closed | sold_out | proof_required | proof_spent
    ticket: str | None = None
    claims: Claims | None = None
    existing: bool = False
    heartbeat: int | None = None  # slice the join recorded the visitor in
    retry_after_seconds: float | None = None


@dataclass(slots=True)  # not frozen: built on every poll, 3x as fast
class Poll:
    status: Status
    admission_token: str | None
    heartbeat: int | None  # slice the waiter was last recorded in; echoed back by the client


@dataclass(frozen=True)
class AdmitResult:
    outcome: str  # ok|stale|wait|not_open|opened|sold_out|closed|no_sale|idle|full
    admitted: int = 0
    skipped: int = 0
    frontier: int = 0


@dataclass(frozen=True)
class Counters:
    waiting: int
    active: int
    admitted_total: int
    skipped_total: int
    frontier: int
    joined: int
    opened: bool
    sold_out: bool
    pow_difficulty: int = 0


@lru_cache(maxsize=256)
def _permutation(key: bytes, size: int) -> Permutation:
    return Permutation(key, size)


class Places:
    """The places of a frozen pre-queue, each worked out once: the permutation costs 5-10 µs
    a call (six keyed BLAKE2b rounds, cycle-walked), and every pre-queue waiter polls again
    and again until their turn. 8 bytes per pre-queue place, allocated at the first poll."""

    __slots__ = ("known", "permutation")

    def __init__(self, key: bytes, size: int) -> None:
        self.permutation = _permutation(key, size)
        self.known = array("q", [-1]) * size

    def of(self, index: int) -> int:
        if index < 0:
            return self.permutation.forward(index)  # refused there, as always
        place = self.known[index]
        if place < 0:
            place = self.known[index] = self.permutation.forward(index)
        return place


@lru_cache(maxsize=8)  # rooms opened at once in one process: a few at most
def _places(key: bytes, size: int) -> Places:
    return Places(key, size)


def place_of(view: RoomView, index: int) -> int:
    """0-based position in line of join index `index` in an opened room."""
    if index < view.prequeue:
        return _places(view.shuffle_key, view.prequeue).of(index)
    return index


def index_at(view: RoomView, position: int) -> int:
    if position < view.prequeue:
        return _permutation(view.shuffle_key, view.prequeue).inverse(position)
    return position


class WaitingRoom:
    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        signer: Signer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.signer = signer
        self.clock = clock
        self.scripts = Scripts(redis, settings.redis_command_timeout_seconds)
        self._pipeline = self.scripts.pipeline  # the hot path's connection to the same Redis
        self._views: dict[str, tuple[float, RoomView]] = {}
        self._refreshing: dict[str, asyncio.Future[RoomView]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def keys(self, sale_id: str) -> SaleKeys:
        return SaleKeys(self.settings.redis_prefix, sale_id, self.settings.join_buckets)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- configuration ---------------------------------------------------------------------

    async def install(self, sale: Sale) -> None:
        """Write the sale's admission settings into its room; counters are never touched, so
        this is safe on a live sale (admission settings change live)."""
        keys = self.keys(sale.id)
        config: dict[FieldT, EncodableT] = {
            "opens_ms": int(sale.opens_at.timestamp() * 1000),
            "closes_ms": int(sale.closes_at.timestamp() * 1000),
            "batch_size": sale.batch_size,
            "interval_ms": sale.batch_interval_ms,
            "max_active": sale.max_active,
            "admission_ttl_ms": sale.admission_ttl_seconds * 1000,
            "abandon_ms": sale.abandon_after_seconds * 1000,
            "closed": 1 if sale.closed_at else 0,
            "identity": 1 if sale.identity_required else 0,
            # the sale's base; the admitter raises it while joins outpace admission
            "pow_bits": sale.pow_difficulty,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.meta, mapping=config)
            pipe.hsetnx(keys.meta, "shuffle_key", secrets.token_hex(16))
            await pipe.execute()
        self._views.pop(sale.id, None)

    def forget(self, sale_id: str) -> None:
        """Drop this process's cached view of the room (after a change made here)."""
        self._views.pop(sale_id, None)

    async def set_pow_difficulty(self, sale_id: str, bits: int) -> None:
        """The admitter's price on new places (bits), until it or the next install changes it."""
        await self.redis.hset(self.keys(sale_id).meta, "pow_bits", bits)
        self._views.pop(sale_id, None)

    async def set_sold_out(self, sale_id: str, sold_out: bool = True) -> None:
        """The inventory hook: once stock is gone every poll answers `sold_out` and admission
        stops; clearing it (stock returned) resumes both."""
        await self.redis.hset(self.keys(sale_id).meta, "sold_out", 1 if sold_out else 0)
        self._views.pop(sale_id, None)

    async def restock(self, sale_id: str, stock: int) -> list[Any]:
        """Bring a warm sale's stock to `stock` (restock.lua; running it twice is harmless)."""
        keys = self.keys(sale_id)
        result = await self.scripts.restock(keys=[keys.inventory, keys.meta], args=[stock])
        self._views.pop(sale_id, None)
        return [_text(result[0]), *result[1:]]

    async def remove(self, sale_id: str) -> int:
        """Delete every key of the sale's room; returns how many were deleted."""
        removed = await remove_matching(self.redis, self.keys(sale_id).pattern)
        self._views.pop(sale_id, None)
        return removed

    # -- reading the room ------------------------------------------------------------------

    async def view(self, sale_id: str, *, fresh: bool = False) -> RoomView:
        """The room as Redis holds it, reused for `status_cache_ms` unless `fresh`.

        One read refreshes an expired view; meanwhile the other callers keep the view it
        replaces (older by one round trip at most) instead of queueing behind it: behind a
        lock each waiter is woken by the previous one, one event-loop turn apiece, and a busy
        worker's polls would stall for tens of milliseconds four times a second. Without any
        view yet, callers share the one read under way."""
        ttl = self.settings.status_cache_ms / 1000
        if fresh or ttl <= 0:  # read now (after any write this caller made), one at a time
            async with self._locks.setdefault(sale_id, asyncio.Lock()):
                return await self._read_view(sale_id)
        cached = self._views.get(sale_id)
        refreshing = self._refreshing.get(sale_id)
        if cached is not None and (refreshing is not None or time.monotonic() - cached[0] < ttl):
            return cached[1]
        if refreshing is None:
            refreshing = self._refreshing[sale_id] = asyncio.ensure_future(self._read_view(sale_id))
            refreshing.add_done_callback(lambda done: self._refreshed(sale_id, done))
        return await asyncio.shield(refreshing)

    def _refreshed(self, sale_id: str, done: asyncio.Future[RoomView]) -> None:
        self._refreshing.pop(sale_id, None)
        if not done.cancelled():
            done.exception()  # retrieved: its awaiters (if any are left) have raised it

    async def _read_view(self, sale_id: str) -> RoomView:
        keys = self.keys(sale_id)
        fields, batches, held = await self._pipeline().execute_many(
            [
                ("HGETALL", keys.meta),
                ("LRANGE", keys.batches, 0, -1),
                ("HGET", keys.inventory, "held"),
            ]
        )
        meta = dict(zip(fields[::2], fields[1::2], strict=True))
        if not meta or "opens_ms" not in meta:
            self._views.pop(sale_id, None)
            raise NoSuchRoom(sale_id)
        view = RoomView.from_redis(meta, batches, held_units=int(held or 0))
        self._views[sale_id] = (time.monotonic(), view)
        return view

    async def counters(self, sale_id: str) -> Counters:
        view = await self.view(sale_id, fresh=True)
        active = await self.redis.zcount(self.keys(sale_id).active, f"({self.now_ms()}", "+inf")
        return Counters(
            waiting=view.waiting,
            active=active,
            admitted_total=view.admitted_total,
            skipped_total=view.skipped_total,
            frontier=view.frontier,
            joined=view.seq if view.opened else view.pre,
            opened=view.opened,
            sold_out=view.sold_out,
            pow_difficulty=view.pow_difficulty,
        )

    # -- shoppers --------------------------------------------------------------------------

    async def join(
        self, sale_id: str, visitor: str, address: str, proof: Proof | None = None
    ) -> JoinResult:
        """Give `visitor` a place (or their place again). Where the sale prices new places
        (`view.proof_required`), a new one needs a verified `proof`, spent here once."""
        keys = self.keys(sale_id)
        view = await self.view(sale_id)
        now = self.now_ms()
        proof_mode = 0
        if view.proof_required:
            proof_mode = 1 if proof is None else 2
        current = heartbeat_slice(now, view.abandon_ms)
        window_ms = self.settings.rate_window_seconds * 1000
        status, value, existing = await self.scripts.join(
            keys=[
                keys.meta,
                keys.visitors(visitor),
                keys.heartbeat(current),
                keys.rate("v", visitor),
                keys.rate("a", address),
                keys.inventory,
                keys.proof(proof.proof_id if proof else "-"),
            ],
            args=[
                visitor,
                now,
                self._heartbeat_ttl_ms(view),
                window_ms,
                self.settings.join_limit_per_visitor,
                self.settings.join_limit_per_address,
                proof_mode,
                (proof.expires_ms - now) if proof else 0,
            ],
        )
        status = _text(status)
        if status == "no_sale":
            self._views.pop(sale_id, None)
            raise NoSuchRoom(sale_id)
        if status == "rate_limited":
            return JoinResult("rate_limited", retry_after_seconds=max(1.0, int(value) / 1000))
        if status != "ok":
            return JoinResult(status)
        claims = Claims(TICKET, sale_id, visitor, int(value), exp=view.closes_ms / 1000 + 3600)
        return JoinResult(
            "ok",
            ticket=self.signer.sign(claims),
            claims=claims,
            existing=bool(int(existing)),
            heartbeat=current,
        )

    async def poll(self, sale_id: str, ticket: Claims, heartbeat: int | None = None) -> Poll:
        """The waiter's status; records their presence at most once per heartbeat slice."""
        view = await self.view(sale_id)
        now = self.now_ms()
        j = ticket.index
        position = place_of(view, j) if view.opened else None
        passed = position is not None and position < view.frontier
        current = heartbeat_slice(now, view.abandon_ms)
        # a waiter keeps their place while stock may still come back from unpaid holds
        may_return = not view.sold_out or view.held_units > 0
        live = not view.is_closed(now) and may_return and not passed
        write_heartbeat = live and heartbeat != current
        outcome = None
        if write_heartbeat or passed:
            keys = self.keys(sale_id)
            commands: list[tuple[str | int, ...]] = []
            if write_heartbeat:
                commands.append(("SETBIT", keys.heartbeat(current), j, 1))
                commands.append(("PEXPIRE", keys.heartbeat(current), self._heartbeat_ttl_ms(view)))
            if passed:
                commands.append(("GETBIT", keys.admitted, j))
                commands.append(("ZSCORE", keys.active, j))
            results = await self._pipeline().execute_many(commands)
            if passed:
                was_admitted = results[-2]
                until = None if results[-1] is None else int(float(results[-1]))
                active_until = until if until is not None and until > now else None
                outcome = Outcome(admitted=bool(was_admitted), active_until_ms=active_until)
        spread = (j * 0.6180339887) % 1.0  # golden-ratio stagger: neighbours poll apart
        status = decide(view, position=position, outcome=outcome, now_ms=now, spread=spread)
        token = None
        if status.state is State.ADMITTED and status.admitted_until_ms:
            token = self.signer.sign(
                Claims(ADMISSION, sale_id, ticket.visitor, j, exp=status.admitted_until_ms / 1000)
            )
        recorded = current if (write_heartbeat or heartbeat == current) and live else None
        return Poll(status=status, admission_token=token, heartbeat=recorded)

    async def leave(self, sale_id: str, ticket: Claims) -> None:
        """Give up a place or an admission at once, so the slot goes to the next person."""
        view = await self.view(sale_id)
        keys = self.keys(sale_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for slice_no in heartbeat_slices(self.now_ms(), view.abandon_ms):
                pipe.setbit(keys.heartbeat(slice_no), ticket.index, 0)
            pipe.zrem(keys.active, ticket.index)
            await pipe.execute()

    async def finish(self, sale_id: str, index: int) -> None:
        """A shopper is done (bought or gave up): their admission stops counting as active."""
        await self.redis.zrem(self.keys(sale_id).active, index)

    async def is_active(self, sale_id: str, index: int) -> bool:
        until = await self.redis.zscore(self.keys(sale_id).active, index)
        return until is not None and until > self.now_ms()

    # -- admission -------------------------------------------------------------------------

    async def admit_once(self, sale_id: str) -> AdmitResult:
        """Admit the next batch if one is due. Safe to run from many admitters at once: the
        script re-checks the frontier it was computed from and refuses stale work."""
        view = await self.view(sale_id, fresh=True)
        now = self.now_ms()
        if view.is_closed(now):
            return AdmitResult("closed")
        if view.sold_out:
            return AdmitResult("sold_out")
        if not view.opened and now < view.opens_ms:
            return AdmitResult("not_open")
        if view.opened and now < view.next_batch_ms:
            return AdmitResult("wait", frontier=view.frontier)
        candidates: list[int] = []
        if view.opened:
            remaining = view.seq - view.frontier
            if remaining <= 0:
                return AdmitResult("idle", frontier=view.frontier)
            active = await self.redis.zcount(self.keys(sale_id).active, f"({now}", "+inf")
            free = min(view.batch_size, view.max_active - active)
            if free <= 0:  # full: no need to draw candidates (the script re-checks anyway)
                return AdmitResult("full", frontier=view.frontier)
            scan = min(remaining, free * 4 + 64, 5000)
            candidates = [index_at(view, p) for p in range(view.frontier, view.frontier + scan)]
        keys = self.keys(sale_id)
        script_keys = [keys.meta, keys.active, keys.admitted, keys.batches]
        script_keys += [keys.heartbeat(s) for s in heartbeat_slices(now, view.abandon_ms)]
        status, a, b, c = await self.scripts.admit(
            keys=script_keys, args=[now, view.frontier, *candidates]
        )
        self._views.pop(sale_id, None)
        return AdmitResult(_text(status), admitted=int(a), skipped=int(b), frontier=int(c))

    @staticmethod
    def _heartbeat_ttl_ms(view: RoomView) -> int:
        slice_ms = max(1, view.abandon_ms // HEARTBEAT_SLICES)
        return slice_ms * (HEARTBEAT_SLICES + 2)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
