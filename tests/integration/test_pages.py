"""The shopper's pages without a browser: what is served, with which headers, and what the
static files hold (strings in every language, no external URL, labelled inputs, no inline
script or style the Content-Security-Policy would block)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from flashsale.api import pages

STATIC = Path(pages.__file__).with_name("static")
TEMPLATES = sorted((STATIC / "html").glob("*.html"))
APP_JS = (STATIC / "app.js").read_text(encoding="utf-8")


def strings() -> dict[str, dict[str, str]]:
    source = (STATIC / "i18n.js").read_text(encoding="utf-8")
    table = re.search(r"/\* i18n:begin \*/(.*)/\* i18n:end \*/", source, re.S)
    assert table, "i18n.js must keep its table between the i18n:begin and i18n:end markers"
    parsed: dict[str, dict[str, str]] = json.loads(table.group(1))
    return parsed


def assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"


class Html(HTMLParser):
    """Collects what the checks need from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        self._in_script = tag == "script"
        if tag == "script" and "src" not in attributes:
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def of(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]


def parse(text: str) -> Html:
    parser = Html()
    parser.feed(text)
    return parser


# -- served pages ----------------------------------------------------------------------------


async def test_landing_lists_the_sales(
    client: httpx.AsyncClient, make_sale: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the page shows the soonest LANDING_LIMIT sales; the test schema holds every other
    # test's sales too, so lift the limit rather than depend on their dates
    monkeypatch.setattr(pages, "LANDING_LIMIT", 100_000)
    sale = await make_sale(name="<b>Night & Day</b>")
    response = await client.get("/")
    assert response.status_code == 200
    assert_page_headers(response)
    assert f'href="/sales/{sale.id}"' in response.text
    assert "&lt;b&gt;Night &amp; Day&lt;/b&gt;" in response.text  # escaped, never markup
    assert "<b>Night" not in response.text
    page = parse(response.text)
    assert page.of("html")[0]["lang"] == "en"
    assert any(t["datetime"] == sale.opens_at.isoformat() for t in page.of("time"))


async def test_sale_page(client: httpx.AsyncClient, make_sale: Any) -> None:
    sale = await make_sale()
    response = await client.get(f"/sales/{sale.id}")
    assert response.status_code == 200
    assert_page_headers(response)
    page = parse(response.text)
    assert page.of("body")[0]["data-page"] == "sale"
    version = pages.version()
    sources = [s["src"] for s in page.of("script")] + [
        link["href"] for link in page.of("link") if link.get("rel") in ("stylesheet", "icon")
    ]
    assert sources and all(
        re.fullmatch(rf"/static/[a-z0-9-]+\.\w+\?v={version}", s) for s in sources
    ), sources
    for source in sources:  # every asset the page names is served
        assert (await client.get(source)).status_code == 200, source


@pytest.mark.parametrize("path", ["/sales/no-such-sale-anywhere", "/sales/NOT_AN_ID"])
async def test_unknown_sale_page_is_a_404_page(client: httpx.AsyncClient, path: str) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = await client.get(path, headers=browser)
    assert response.status_code == 404
    assert_page_headers(response)
    assert 'data-page="not-found"' in response.text
    # any other client gets the API's usual error, as on every route naming a sale
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_sale"


async def test_static_files(client: httpx.AsyncClient) -> None:
    expected = {
        "app.js": "text/javascript; charset=utf-8",
        "i18n.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "favicon.svg": "image/svg+xml",
    }
    for name, content_type in expected.items():
        response = await client.get(f"/static/{name}?v={pages.version()}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == content_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.content == (STATIC / name).read_bytes()
        # without the current version: cached briefly only (it may change on the next deploy)
        stale = await client.get(f"/static/{name}?v=old")
        assert stale.headers["cache-control"] == "public, max-age=300"
        again = await client.get(
            f"/static/{name}", headers={"If-None-Match": response.headers["etag"]}
        )
        assert again.status_code == 304 and not again.content


@pytest.mark.parametrize(
    "name",
    ["nope.js", "sale.html", "html", "..%2Fpages.py", "..%2F..%2Fpyproject.toml", "app.js%00.css"],
)
async def test_static_serves_nothing_else(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


# -- what the static files hold ------------------------------------------------------------------


def test_every_string_exists_in_every_language() -> None:
    table = strings()
    assert set(table) == {"en", "ko"}
    english = table["en"]
    for lang, texts in table.items():
        assert set(texts) == set(english), (lang, set(texts) ^ set(english))
        for key, text in texts.items():
            assert text.strip(), (lang, key)
            # the same placeholders in every language
            assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", english[key])), (
                lang,
                key,
            )
    assert re.search(r"[\uac00-\ud7a3]", table["ko"]["waiting_title"])  # Hangul


def used_keys() -> set[str]:
    used = set(re.findall(r"\bt\(\s*\"(\w+)\"", APP_JS))
    # t(condition ? "a" : "b") and the keys the script builds from a state or an order status
    for call in re.findall(r"\bt\(([^()]*\?[^()]*)\)", APP_JS):
        used |= set(re.findall(r"[?:]\s*\(?\"(\w+)\"", call))
    kinds = re.search(r"const MESSAGES = \{(.*?)\};", APP_JS, re.S)
    assert kinds
    for kind in re.findall(r"^\s*(\w+): \{", kinds.group(1), re.M):
        used |= {f"msg_{kind}_title", f"msg_{kind}_text"}
    used |= {
        f"status_{s}"
        for s in ("held", "paying", "confirmed", "cancelling", "released", "failed", "cancelled")
    }
    used |= {"payment_unavailable", "payment_retry"}  # S.payRetryText
    for source in [*TEMPLATES, Path(pages.__file__)]:
        used |= set(re.findall(r'data-i18n="(\w+)"', source.read_text(encoding="utf-8")))
    return used


def test_every_key_the_pages_use_is_translated_and_every_string_is_used() -> None:
    table = strings()["en"]
    used = used_keys()
    assert used - set(table) == set(), "keys used but missing from i18n.js"
    sources = APP_JS + "".join(p.read_text(encoding="utf-8") for p in TEMPLATES)
    sources += Path(pages.__file__).read_text(encoding="utf-8")
    unused = {key for key in table if key not in used and f'"{key}"' not in sources}
    assert unused == set(), "strings nobody uses"


def test_no_external_urls_in_static_files() -> None:
    files = [p for p in STATIC.rglob("*") if p.is_file()]
    assert len(files) >= 7
    for path in files:
        text = path.read_text(encoding="utf-8")
        text = re.sub(r'xmlns(:\w+)?="[^"]*"', "", text)  # an SVG namespace is not a fetch
        found = re.findall(r"(?:https?:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)+", text, re.I)
        assert found == [], (path.name, found)
        assert "@import" not in text and "@font-face" not in text, path.name


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_html_is_accessible_and_csp_clean(template: Path) -> None:
    text = template.read_text(encoding="utf-8")
    page = parse(text)
    assert page.of("html")[0].get("lang"), "the html element needs a lang attribute"
    assert any(m.get("name") == "viewport" for m in page.of("meta"))
    assert page.of("title")
    assert page.inline_scripts == 0, "inline scripts are blocked by the CSP"
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"inline style on <{tag}> is blocked by the CSP"
        assert not [a for a in attrs if a.startswith("on")], f"inline handler on <{tag}>"
    labelled = {label["for"] for label in page.of("label") if label.get("for")}
    for tag, attrs in page.tags:
        if tag in ("input", "select", "textarea") and attrs.get("type") != "hidden":
            assert (
                attrs.get("id") in labelled
                or attrs.get("aria-label")
                or attrs.get("aria-labelledby")
            ), f"<{tag} id={attrs.get('id')}> has no label"
    for attrs in page.of("img"):
        assert "alt" in attrs
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert len(ids) == len(set(ids)), "duplicate ids"


def test_the_script_finds_every_element_it_names() -> None:
    sale = (STATIC / "html" / "sale.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'\bid="([\w-]+)"', sale))
    named = set(re.findall(r'\$\("([\w-]+)"\)', APP_JS))
    named |= set(re.findall(r'"([\w-]+-(?:button|countdown))"', APP_JS))
    assert named - ids == set()
    views = set(re.findall(r'"(\w+)"', re.search(r"const VIEWS = \[(.*?)\]", APP_JS).group(1)))
    assert {f"view-{v}" for v in views} <= ids


def test_polling_follows_the_server_and_backs_off() -> None:
    """The script's contract with the API, read from its source: poll_after_seconds with
    jitter, hb echoed, full-jitter exponential backoff that honours Retry-After, an
    Idempotency-Key per hold reused on retry, the visitor header on orders and payments."""
    assert "status.poll_after_seconds" in APP_JS and "Math.random()" in APP_JS
    assert "?hb=${encodeURIComponent(S.hb)}" in APP_JS
    assert re.search(r"Math\.random\(\) \* ceiling", APP_JS)  # full jitter
    assert "retry-after" in APP_JS and "retryAfter * 1000" in APP_JS
    assert '"Idempotency-Key": pending.key' in APP_JS and "crypto.randomUUID" in APP_JS
    assert '"X-Visitor-Id"' in APP_JS and "sessionStorage" in APP_JS
    assert 'aria-live="polite"' in (STATIC / "html" / "sale.html").read_text(encoding="utf-8")


def contrast(a: str, b: str) -> float:
    def luminance(colour: str) -> float:
        rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_colours_meet_wcag_aa() -> None:
    css = (STATIC / "app.css").read_text(encoding="utf-8")
    var = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-f]{6});", css))
    white = "#ffffff"
    text_pairs = [
        ("ink", "bg"),
        ("ink", "card"),
        ("muted", "card"),
        ("muted", "bg"),
        ("brand-dark", "card"),
        ("warn-ink", "warn-bg"),
        ("err-ink", "err-bg"),
        ("ok-ink", "ok-bg"),
        ("taken-ink", "taken"),
        ("ink", "taken"),
    ]
    for fg, bg in text_pairs:
        assert contrast(var[fg], var[bg]) >= 4.5, (fg, bg)
    assert contrast(white, var["brand"]) >= 4.5  # primary buttons, chosen seats
    assert contrast(var["brand"], var["card"]) >= 3 and contrast(var["brand"], var["bg"]) >= 3
