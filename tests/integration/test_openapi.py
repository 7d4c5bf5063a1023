"""/openapi.json describes exactly the app's routes; health, readiness and metrics answer."""

from __future__ import annotations

import re
from typing import Any

import httpx
from starlette.routing import Route

from flashsale.api.app import create_app
from flashsale.config import Settings

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def app_operations(settings: Settings) -> set[tuple[str, str]]:
    operations = set()
    for route in create_app(settings).routes:
        assert isinstance(route, Route), f"{route!r} is not a plain Route: document it"
        assert route.methods, route.path
        methods = set(route.methods)
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route by itself
        operations.update((route.path, method.lower()) for method in methods)
    return operations


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(refs(item) for item in node)) if node else set()
    return set()


async def test_openapi_lists_every_route_and_nothing_else(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }
    routes = app_operations(settings)
    assert len(routes) >= 14
    assert routes - documented == set(), "routes missing from /openapi.json"
    assert documented - routes == set(), "/openapi.json documents what is not a route"
    for path, item in doc["paths"].items():
        assert set(item) <= METHODS | {"parameters", "summary", "description"}, path


async def test_every_operation_is_described(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            responses = operation.get("responses")
            assert responses, where
            for status, response in responses.items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status), where
                assert response.get("description"), (where, status)
            assert any(s.startswith("2") for s in responses), where
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), where
            if path.startswith("/admin"):
                assert operation.get("security") == [{"bearer": []}], where
                assert {"401", "403"} <= set(responses), where
            if "{sale_id}" in path and method != "put":
                assert "404" in responses, where


async def test_schema_references_resolve(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for ref in refs(doc):
        assert ref.startswith(("#/components/schemas/", "#/components/headers/")), ref
        kind, name = ref.split("/")[2:]
        assert name in doc["components"][kind], ref


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "postgres": "ok"}}


async def test_metrics_after_a_request(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "flashsale_http_request_duration_seconds" in text
    # labelled by route template, method and status
    assert re.search(r'flashsale_http_request_duration_seconds_count\{[^}]*route="/healthz"', text)
    await client.get("/api/sales/no-such-sale-here")
    text = (await client.get("/metrics")).text
    assert re.search(r'_count\{[^}]*route="/api/sales/\{sale_id\}"[^}]*status="404"', text), (
        "routes are labelled by template, not raw path"
    )


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
