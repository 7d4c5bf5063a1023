from flashsale.waiting_room.purchase import Purchases
from flashsale.waiting_room.room import WaitingRoom
from flashsale.waiting_room.tokens import ADMISSION


async def test_hold_pay_confirm(
    make_sale, room: WaitingRoom, purchases: Purchases, clock, signer, pool
) -> None:
    sale = await make_sale(stock=5, price_cents=1500)
    joined = await room.join(sale.id, "visitor-0001", "127.0.0.1")
    clock.advance(3601)
    await room.poll(sale.id, joined.claims)
    await room.admit_once(sale.id)
    await room.admit_once(sale.id)
    poll = await room.poll(sale.id, joined.claims)
    claims = signer.verify(poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock())
    held = await purchases.hold(sale, claims, quantity=2, idempotency_key="k1")
    assert held.created and held.order["status"] == "held"
    again = await purchases.hold(sale, claims, quantity=2, idempotency_key="k1")
    assert not again.created and again.order["id"] == held.order["id"]
    order = await purchases.pay(sale, "visitor-0001", held.order["id"], "tok_approve")
    assert order["status"] == "confirmed"
    row = await pool.fetchrow("SELECT held, sold FROM sale_inventory WHERE sale_id=$1", sale.id)
    assert (row["held"], row["sold"]) == (0, 2)
    report = await purchases.stock.reconcile(sale)
    assert report.redis["sold"] == 2 and report.redis["avail"] == 3, report


async def test_persister_writes_holds(
    make_sale, room: WaitingRoom, purchases: Purchases, clock, signer, pool, services
) -> None:
    from flashsale.waiting_room.persister import Persister

    sale = await make_sale(stock=3)
    tokens = []
    for n in range(4):
        joined = await room.join(sale.id, f"visitor-{n:04d}", "127.0.0.1")
        tokens.append(joined.claims)
    clock.advance(3601)
    for claims in tokens:
        await room.poll(sale.id, claims)
    await room.admit_once(sale.id)
    await room.admit_once(sale.id)
    orders = []
    for claims in tokens[:3]:
        poll = await room.poll(sale.id, claims)
        admission = signer.verify(poll.admission_token, kind=ADMISSION, sale=sale.id, now=clock())
        orders.append((await purchases.hold(sale, admission, quantity=1)).order["id"])
    persister = Persister(services.redis, pool, services.sales, purchases, consumer="t1")
    assert await persister.drain(sale) == 3
    rows = await pool.fetch("SELECT status FROM orders WHERE sale_id=$1", sale.id)
    assert sorted(r["status"] for r in rows) == ["held"] * 3
    # an expired hold returns to stock and the release reaches PostgreSQL
    clock.advance(sale.hold_seconds + 1)
    counts = await purchases.sweep(sale)
    assert counts["expired"] == 3
    assert await persister.drain(sale) == 3
    row = await pool.fetchrow("SELECT held, sold FROM sale_inventory WHERE sale_id=$1", sale.id)
    assert (row["held"], row["sold"]) == (0, 0)
    report = await purchases.stock.reconcile(sale)
    assert report.ok, report
