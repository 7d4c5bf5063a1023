from flashsale.waiting_room.room import WaitingRoom


async def test_join_then_admit(make_sale, room: WaitingRoom, clock) -> None:
    sale = await make_sale()
    joined = await room.join(sale.id, "visitor-0001", "127.0.0.1")
    assert joined.outcome == "ok"
    clock.advance(3601)
    await room.poll(sale.id, joined.claims)  # still here at the opening
    assert (await room.admit_once(sale.id)).outcome == "opened"
    result = await room.admit_once(sale.id)
    assert result.admitted == 1
    poll = await room.poll(sale.id, joined.claims)
    assert poll.status.state == "admitted"


async def test_http_join(client, make_sale) -> None:
    sale = await make_sale()
    response = await client.post(f"/api/sales/{sale.id}/join")
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "not_open"
