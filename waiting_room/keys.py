"""Redis key names of one sale, all sharing the hash tag `{sale id}` so that every script
touching a sale runs on one Redis Cluster slot. Keys are only ever built here, never in Lua."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# A sale's abandonment window is cut into this many heartbeat slices; a waiter counts as
# present when seen in any of the last HEARTBEAT_SLICES slices.
HEARTBEAT_SLICES = 4


@dataclass(frozen=True)
class SaleKeys:
    prefix: str
    sale: str
    buckets: int

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.sale}}}"

    @property
    def meta(self) -> str:
        """Hash: the sale's admission settings and the room's counters."""
        return f"{self.base}:meta"

    @property
    def active(self) -> str:
        """Sorted set: join index of each active shopper, scored by admission expiry (ms)."""
        return f"{self.base}:active"

    @property
    def admitted(self) -> str:
        """Bitmap: bit j set once join index j has been admitted."""
        return f"{self.base}:admitted"

    @property
    def batches(self) -> str:
        """List: recent admission batches `t_ms:frontier:admitted:skipped`, newest first."""
        return f"{self.base}:batches"

    def visitors(self, visitor: str) -> str:
        """Hash bucket: visitor id -> join index. Small buckets stay listpack-encoded."""
        return f"{self.base}:v:{zlib.crc32(visitor.encode()) % self.buckets}"

    def heartbeat(self, slice_no: int) -> str:
        """Bitmap: bit j set when join index j polled during heartbeat slice `slice_no`."""
        return f"{self.base}:hb:{slice_no}"

    def proof(self, proof_id: str) -> str:
        """String: a proof-of-work solution already spent on a place (single use), kept until
        its challenge expires."""
        return f"{self.base}:pow:{proof_id}"

    def rate(self, kind: str, subject: str) -> str:
        """Counter for the join rate limit of one visitor (`v`) or client address (`a`)."""
        return f"{self.base}:rl:{kind}:{subject}"

    # -- purchase ------------------------------------------------------------------------

    @property
    def inventory(self) -> str:
        """Hash: stock, avail, held, sold (units) and `warmed`, the pre-warm fence."""
        return f"{self.base}:inv"

    @property
    def seats(self) -> str:
        """Bitmap: bit s set while seat s is held or sold."""
        return f"{self.base}:seats"

    @property
    def holds(self) -> str:
        """Sorted set: open holds (order id) scored by expiry, ms."""
        return f"{self.base}:holds"

    def hold(self, order_id: str) -> str:
        """Hash: one hold/order as Redis knows it."""
        return f"{self.base}:h:{order_id}"

    def idempotency(self, visitor: str, key_digest: str) -> str:
        """String: the order a shopper's Idempotency-Key already produced."""
        return f"{self.base}:idem:{visitor}:{key_digest}"

    def shopper_units(self, visitor: str) -> str:
        """Counter: units a shopper holds or bought (the per-shopper limit)."""
        return f"{self.base}:u:{visitor}"

    def shopper_orders(self, visitor: str) -> str:
        """List: a shopper's order ids, oldest first."""
        return f"{self.base}:o:{visitor}"

    @property
    def orders_stream(self) -> str:
        """Stream: order intents and releases on their way to PostgreSQL."""
        return f"{self.base}:orders"

    @property
    def dead_letters(self) -> str:
        """Stream: entries the persister could not apply, with the reason."""
        return f"{self.base}:orders:dead"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of the sale (for teardown)."""
        return f"{self.base}:*"


def heartbeat_slice(now_ms: int, abandon_ms: int) -> int:
    return now_ms // max(1, abandon_ms // HEARTBEAT_SLICES)


def heartbeat_slices(now_ms: int, abandon_ms: int) -> list[int]:
    """The slices that count as 'recently seen' at `now_ms`, newest first."""
    current = heartbeat_slice(now_ms, abandon_ms)
    return [current - i for i in range(HEARTBEAT_SLICES)]
