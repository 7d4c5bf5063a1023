"""The request-parsing layer (api/inputs.py), property by property (hypothesis): every parser
either returns a value of its type or refuses with the API's own error (a 4xx ApiError), for
any input at all; canonical forms round-trip; and the caller's address can never be chosen by
the caller."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any
from urllib.parse import quote_plus

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from flashsale.api import inputs
from flashsale.api.errors import ApiError

TEXT = st.text(max_size=80)
ANY_TEXT = st.one_of(TEXT, st.text(alphabet=st.characters(codec="latin-1"), max_size=80))


def refused(call: Any, *args: Any, status: int | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    assert 400 <= caught.value.status < 500
    if status is not None:
        assert caught.value.status == status
    return caught.value


def spellings(u: uuid.UUID) -> list[str]:
    plain = str(u)
    return [
        plain,
        plain.upper(),
        u.hex,
        u.hex.upper(),
        f"{{{plain}}}",
        f"{{{plain.upper()}}}",
        f"urn:uuid:{plain}",
        f"URN:UUID:{plain.upper()}",
    ]


@given(st.uuids())
def test_every_spelling_of_an_order_id_is_the_same_order(u: uuid.UUID) -> None:
    for spelling in spellings(u):
        assert inputs.order_id(spelling) == str(u)


@given(ANY_TEXT)
def test_an_order_id_is_canonical_or_a_404(raw: str) -> None:
    try:
        canonical = inputs.order_id(raw)
    except ApiError as exc:
        assert (exc.status, exc.code) == (404, "unknown_order")
        return
    assert canonical == str(uuid.UUID(canonical))  # lowercase, hyphenated
    assert uuid.UUID(canonical) == uuid.UUID(raw.lower().removeprefix("urn:uuid:").strip("{}"))


@pytest.mark.parametrize(
    "raw",
    [
        "12345678-1234-1234-1234-1234567890a",  # a digit short
        "12345678-1234-1234-1234-1234567890abc",  # a digit long
        "1234567812341234123412345678 90a",
        "+2345678123412341234123456789012",  # int(..., 16) takes a sign...
        "1234_678123412341234123456789012",  # ...and underscores: uuid.UUID accepts these
        "{12345678-1234-1234-1234-1234567890ab",  # an unclosed brace
        "12345678-1234-1234-1234-1234567890ab}",
        "12345678-1234-1234-1234-1234567890ab\n",
        "12345678-12341234-1234-1234567890ab",  # hyphens all or none
        "urn:uuid:",
        "\uff462345678-1234-1234-1234-1234567890ab",  # a full-width letter f
    ],
)
def test_near_uuids_are_refused(raw: str) -> None:
    refused(inputs.order_id, raw, status=404)


@given(ANY_TEXT)
def test_sale_ids_are_dns_labels_or_a_404(raw: str) -> None:
    try:
        assert inputs.sale_id(raw) == raw
    except ApiError as exc:
        assert (exc.status, exc.code) == (404, "unknown_sale")
        return
    assert raw == raw.lower().strip() and 1 <= len(raw) <= 63 and "\n" not in raw


@given(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True))
def test_a_trailing_newline_never_passes_for_an_id(raw: str) -> None:
    for parse in (inputs.sale_id, inputs.visitor_id, inputs.idempotency_key):
        refused(parse, raw + "\n")


@given(ANY_TEXT)
def test_visitor_ids(raw: str) -> None:
    try:
        assert inputs.visitor_id(raw) == raw
    except ApiError as exc:
        assert (exc.status, exc.field) == (400, "visitor_id")
        return
    assert 8 <= len(raw) <= 64 and raw.isascii() and raw.replace("-", "").replace("_", "").isalnum()


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_whole_numbers_round_trip(n: int) -> None:
    assert inputs.integer(str(n), "hb") == n


@given(ANY_TEXT)
def test_whole_numbers_are_ascii_digits_or_a_400(raw: str) -> None:
    try:
        value = inputs.integer(raw, "hb")
    except ApiError as exc:
        assert (exc.status, exc.field) == (400, "hb")
        return
    assert raw.isascii() and raw.isdigit() and value == int(raw) >= 0


@given(ANY_TEXT)
def test_booleans(raw: str) -> None:
    try:
        value = inputs.boolean(raw, "force")
    except ApiError as exc:
        assert (exc.status, exc.field) == (400, "force")
        return
    assert value is (raw.lower() in ("1", "true", "yes"))


@given(st.binary(max_size=24))
def test_content_length(raw: bytes) -> None:
    try:
        value = inputs.content_length(raw)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert raw.isdigit() and value == int(raw)


@given(ANY_TEXT)
def test_idempotency_keys(raw: str) -> None:
    try:
        assert inputs.idempotency_key(raw) == raw
    except ApiError as exc:
        assert (exc.status, exc.field) == (400, "Idempotency-Key")
        return
    assert 1 <= len(raw) <= 200 and all(0x21 <= ord(c) <= 0x7E for c in raw)


NAMES = st.sampled_from(["hb", "ticket", "force", "repair"])


@given(st.dictionaries(NAMES, TEXT))
def test_query_strings_round_trip(params: dict[str, str]) -> None:
    raw = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in params.items()).encode()
    assert inputs.query(raw, frozenset(params)) == params
    assert inputs.query(raw, None) == params


@given(st.dictionaries(NAMES, TEXT, min_size=1), st.data())
def test_unknown_and_repeated_query_parameters_are_refused(
    params: dict[str, str], data: st.DataObject
) -> None:
    raw = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in params.items()).encode()
    name = data.draw(st.sampled_from(sorted(params)))
    assert refused(inputs.query, raw, frozenset(params) - {name}).field == name
    assert refused(inputs.query, raw + b"&" + raw, frozenset(params)).status == 400


@given(st.binary(max_size=200))
def test_any_query_string_parses_or_is_refused(raw: bytes) -> None:
    try:
        found = inputs.query(raw, frozenset({"hb"}))
    except ApiError as exc:
        assert exc.status == 400
        return
    assert set(found) <= {"hb"}


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@given(JSON)
def test_a_body_is_an_object_or_a_422(value: Any) -> None:
    body = orjson.dumps(value)
    if isinstance(value, dict):
        assert inputs.json_object(body, None) == value
        if value:
            assert refused(inputs.json_object, body, frozenset()).status == 422
    else:
        error = refused(inputs.json_object, body, None, status=422)
        assert error.field == "body"


@given(st.binary(max_size=200))
def test_any_body_is_read_or_refused_with_a_4xx(raw: bytes) -> None:
    try:
        value = inputs.json_object(raw, frozenset({"quantity"}))
    except ApiError as exc:
        assert exc.status in (400, 422)
        return
    assert isinstance(value, dict) and set(value) <= {"quantity"}


# -- the caller's address ----------------------------------------------------------------------

TRUSTED = inputs.proxies("127.0.0.1, 10.0.0.0/8, fd00::/8")
PUBLIC_V4 = st.ip_addresses(v=4).filter(lambda ip: ip.is_global)
PUBLIC = st.one_of(PUBLIC_V4, st.ip_addresses(v=6).filter(lambda ip: ip.is_global))
PROXY = st.one_of(
    st.just(ipaddress.ip_address("127.0.0.1")),
    st.integers(0, 2**24 - 1).map(lambda n: ipaddress.ip_address(0x0A000000 + n)),
)
FORGED = st.lists(st.one_of(PUBLIC.map(str), PROXY.map(str), TEXT), max_size=5)


@given(FORGED, PUBLIC, st.lists(PROXY, max_size=3), PROXY)
def test_the_client_is_the_hop_the_trusted_proxies_saw(
    forged: list[str], client: Any, proxies: list[Any], peer: Any
) -> None:
    """Whatever the client puts in front of its X-Forwarded-For, the answer is the address
    the first trusted proxy saw it connect from."""
    assume(all("," not in hop for hop in forged))
    chain = ", ".join([*forged, str(client), *map(str, proxies)])
    assert inputs.client_address(str(peer), chain, TRUSTED) == str(client)


@given(PUBLIC, st.one_of(st.none(), TEXT))
def test_an_untrusted_peer_is_the_client_whatever_it_forwards(peer: Any, chain: str | None) -> None:
    assert inputs.client_address(str(peer), chain, TRUSTED) == str(peer)


@given(PROXY, st.lists(PROXY, min_size=1, max_size=4))
def test_an_all_trusted_chain_ends_at_its_left_most_hop(peer: Any, hops: list[Any]) -> None:
    chain = ",".join(map(str, hops))
    assert inputs.client_address(str(peer), chain, TRUSTED) == str(hops[0])


def test_a_hop_that_is_no_address_stops_the_walk_at_the_proxy_that_wrote_it() -> None:
    assert inputs.client_address("10.0.0.2", "6.6.6.6, unknown, 10.0.0.1", TRUSTED) == "10.0.0.1"
    assert inputs.client_address("10.0.0.2", "_hidden", TRUSTED) == "10.0.0.2"


def test_ports_and_brackets_are_dropped() -> None:
    for hop, address in (
        ("203.0.113.9:4711", "203.0.113.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
    ):
        assert inputs.client_address("127.0.0.1", hop, TRUSTED) == address


def test_trusting_everyone_takes_the_left_most_entry() -> None:
    """`*` trusts every hop, so the client-chosen first entry counts: only for an API that no
    client reaches except through a proxy that overwrites the header."""
    assert inputs.client_address("198.51.100.1", "6.6.6.6, 203.0.113.9", inputs.proxies("*")) == (
        "6.6.6.6"
    )


def test_bad_trusted_proxy_settings_are_refused() -> None:
    for bad in ("localhost", "10.0.0.0/33", "1.2.3.4.5"):
        with pytest.raises(ValueError, match="FLASHSALE_FORWARDED_ALLOW_IPS"):
            inputs.proxies(bad)
