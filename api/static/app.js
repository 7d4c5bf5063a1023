/* FlashSale shopper pages: the list of sales, and one sale's waiting room and purchase.
 *
 * Plain browser JavaScript: no build step, no dependency, nothing from another origin (the
 * pages are served with `Content-Security-Policy: default-src 'self'`). The strings live in
 * i18n.js. The page talks to the JSON API exactly as any client would:
 *
 *   POST /api/sales/{id}/join        on every load (idempotent: the fs_vid cookie keeps the place)
 *   GET  /api/sales/{id}/status      every poll_after_seconds (+ jitter), echoing heartbeat as hb
 *   POST /api/sales/{id}/holds       with the admission token and an Idempotency-Key
 *   POST /api/sales/{id}/orders/{order}/pay|cancel, GET .../orders, GET .../seats
 *
 * Errors, 429 and 5xx are retried with exponential backoff and full jitter, never sooner than
 * Retry-After.
 *
 * Two dedicated workers help: poller.js waits and fetches each status poll (a background tab's
 * own timers are throttled, a worker's are not, so the place is kept), and pow.js solves the
 * proof of work an anonymous sale may ask of a new place. A sale that requires the shop's
 * identity takes the shop's token from the link's fragment (#identity=<JWT>) and sends it on
 * join as Authorization: Bearer.
 */
(function () {
  "use strict";

  // the workers are loaded with the same ?v= content hash as this script
  const ASSET_QUERY = document.currentScript ? new URL(document.currentScript.src).search : "";

  function worker(name) {
    try {
      return new Worker(`/static/${name}${ASSET_QUERY}`);
    } catch (e) {
      return null; // no workers here: the caller falls back or says so
    }
  }

  // -- language --------------------------------------------------------------------------

  const STRINGS = window.FS_STRINGS || { en: {} };
  const LANG_KEY = "fs_lang";

  function pickLanguage() {
    const asked = new URLSearchParams(location.search).get("lang");
    if (asked && STRINGS[asked]) return asked;
    try {
      const saved = localStorage.getItem(LANG_KEY);
      if (saved && STRINGS[saved]) return saved;
    } catch (e) { /* storage disabled */ }
    for (const tag of navigator.languages || [navigator.language || "en"]) {
      const base = String(tag).toLowerCase().split("-")[0];
      if (STRINGS[base]) return base;
    }
    return "en";
  }

  let lang = pickLanguage();

  function t(key, vars) {
    const table = STRINGS[lang] || {};
    let text = key in table ? table[key] : (STRINGS.en[key] !== undefined ? STRINGS.en[key] : key);
    if (vars) {
      text = text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
    }
    return text;
  }

  function applyLanguage() {
    document.documentElement.lang = lang;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nLabel));
    }
    const select = document.getElementById("lang-select");
    if (select) select.value = lang;
    for (const el of document.querySelectorAll("time[data-tz]")) {
      el.textContent = formatDateTime(el.getAttribute("datetime"), el.dataset.tz);
    }
  }

  function setupLanguageSwitch(onChange) {
    const select = document.getElementById("lang-select");
    if (!select) return;
    select.addEventListener("change", () => {
      if (!STRINGS[select.value]) return;
      lang = select.value;
      try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* storage disabled */ }
      const url = new URL(location.href);
      url.searchParams.set("lang", lang);
      history.replaceState(history.state, "", url);
      applyLanguage();
      if (onChange) onChange();
    });
  }

  // -- formatting ------------------------------------------------------------------------

  function formatDateTime(iso, timeZone) {
    const date = new Date(iso);
    if (isNaN(date)) return iso || "";
    const options = { weekday: "short", year: "numeric", month: "short", day: "numeric",
                      hour: "2-digit", minute: "2-digit", timeZoneName: "short" };
    try {
      return new Intl.DateTimeFormat(lang, { ...options, timeZone }).format(date);
    } catch (e) {
      return new Intl.DateTimeFormat(lang, options).format(date);
    }
  }

  function formatNumber(n) {
    return new Intl.NumberFormat(lang).format(n);
  }

  function formatMoney(minorUnits, currency) {
    try {
      const format = new Intl.NumberFormat(lang, { style: "currency", currency });
      const digits = format.resolvedOptions().maximumFractionDigits;
      return format.format(minorUnits / 10 ** digits);
    } catch (e) {
      return `${(minorUnits / 100).toFixed(2)} ${currency}`;
    }
  }

  function formatClock(seconds) {
    const total = Math.max(0, Math.ceil(seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  function formatEta(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return t("eta_unknown");
    if (seconds < 60) return t("eta_under_minute");
    if (seconds < 3600) return t("eta_minutes", { n: Math.ceil(seconds / 60) });
    return t("eta_hours", { h: Math.floor(seconds / 3600), m: Math.round((seconds % 3600) / 60) });
  }

  // -- HTTP ------------------------------------------------------------------------------

  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_CAP_MS = 30000;
  let skewMs = 0; // the server's clock minus ours, from the Date header, when it matters

  function serverNow() {
    return Date.now() + skewMs;
  }

  function parseRetryAfter(value) {
    if (!value) return null;
    if (/^\s*\d+\s*$/.test(value)) return Number(value);
    const at = Date.parse(value);
    return isNaN(at) ? null : Math.max(0, (at - serverNow()) / 1000);
  }

  async function api(method, path, { headers = {}, body, timeoutMs = 15000 } = {}) {
    const init = { method, credentials: "same-origin", cache: "no-store",
                   headers: { Accept: "application/json", ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    init.signal = controller.signal;
    try {
      const response = await fetch(path, init);
      noteServerDate(response.headers.get("date"));
      let data = null;
      try { data = await response.json(); } catch (e) { data = null; }
      return { status: response.status, ok: response.ok, data,
               retryAfter: parseRetryAfter(response.headers.get("retry-after")) };
    } catch (e) {
      return { status: 0, ok: false, data: null, retryAfter: null };
    } finally {
      clearTimeout(timer);
    }
  }

  function noteServerDate(value) {
    const date = Date.parse(value || "");
    if (!isNaN(date)) {
      const skew = date + 500 - Date.now(); // the header has a 1 s resolution
      skewMs = Math.abs(skew) > 2000 ? skew : 0;
    }
  }

  function errorCode(answer) {
    return answer.data && answer.data.error ? answer.data.error.code : null;
  }

  function errorMessage(answer) {
    return answer.data && answer.data.error ? answer.data.error.message : "";
  }

  function transient(answer) {
    return answer.status === 0 || answer.status === 429 || answer.status >= 500;
  }

  /* Exponential backoff with full jitter; never sooner than the server's Retry-After. */
  function backoff(attempt, retryAfter) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 10));
    const jittered = Math.random() * ceiling;
    if (retryAfter !== null && retryAfter !== undefined) {
      return Math.max(retryAfter * 1000, jittered) + Math.random() * 500;
    }
    return Math.max(250, jittered);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /* Calls `call` again while its answer is transient, up to `attempts` times. */
  async function withRetry(call, onWait, attempts = Infinity) {
    for (let attempt = 0; ; attempt++) {
      const answer = await call();
      if (!transient(answer) || attempt + 1 >= attempts) return answer;
      const wait = backoff(attempt, answer.retryAfter);
      if (onWait) onWait(answer, wait);
      await sleep(wait);
    }
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // -- DOM helpers -----------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function notice(id, text, kind) {
    const node = $(id);
    if (!node) return;
    node.hidden = !text;
    node.textContent = text || "";
    node.classList.toggle("notice-warn", kind === "warn");
    node.classList.toggle("notice-error", kind === "error");
  }

  // -- the landing page ------------------------------------------------------------------

  function landingPage() {
    applyLanguage();
    setupLanguageSwitch();
  }

  // -- the sale page ---------------------------------------------------------------------

  const VIEWS = ["loading", "waiting", "purchase", "hold", "confirmed", "message"];

  function salePage() {
    const match = location.pathname.match(/^\/sales\/([a-z0-9-]+)\/?$/);
    if (!match) return;
    const saleId = match[1];
    const base = `/api/sales/${saleId}`;
    const storeKey = `fs:${saleId}`;
    const S = {
      sale: null, ticket: null, visitor: null, hb: null, admission: null, admittedUntil: null,
      opensAt: null, order: null, orders: [], holdExpires: null, pollTimer: null,
      poller: undefined, pollId: 0, pollPending: false, identity: null, proofTries: 0, title: null,
      nextPollAt: 0, pollErrors: 0, rejoins: 0, view: null, rerender: null, maxAhead: null,
      prequeue: false, seats: null, selected: new Map(), grid: [], paying: false,
      payRetryAt: null, payRetryText: null, admissionChecked: false, holdChecked: false,
      holdWarned: false, shown: false,
    };

    function stored() {
      try { return JSON.parse(sessionStorage.getItem(storeKey)) || {}; } catch (e) { return {}; }
    }

    function store(patch) {
      try {
        sessionStorage.setItem(storeKey, JSON.stringify({ ...stored(), ...patch }));
      } catch (e) { /* storage disabled: the cookie still keeps the place */ }
    }

    function visitorHeaders() {
      return S.visitor ? { "X-Visitor-Id": S.visitor } : {};
    }

    /* The shop's identity token, handed over in the link's fragment (never sent to a server
     * in a URL), kept for this tab's session only. */
    function takeIdentity() {
      const fragment = new URLSearchParams(location.hash.slice(1));
      const token = fragment.get("identity");
      if (token) {
        store({ identity: token });
        fragment.delete("identity");
        const rest = fragment.toString();
        history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
      }
      return token || stored().identity || null;
    }

    function identityHeaders() {
      return S.identity ? { Authorization: `Bearer ${S.identity}` } : {};
    }

    function updateTitle() {
      const name = S.sale ? S.sale.name : "FlashSale";
      document.title = S.title ? t(S.title.key, { ...S.title.vars, name }) : `${name} · FlashSale`;
    }

    function show(view, name) {
      for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
      const changed = S.view !== view;
      S.view = view;
      if (changed) { // a view sets its own title after showing itself; the others take the sale's
        S.title = null;
        updateTitle();
      }
      document.body.dataset.view = name || view;
      $("orders").hidden = !(["confirmed", "message"].includes(view) && S.orders.length);
      // a view that replaces another moves the focus to its heading (not the first one shown)
      if (changed && S.shown) {
        const heading = $(`view-${view}`).querySelector("h2[tabindex]");
        if (heading) heading.focus();
      }
      if (view !== "loading") S.shown = true;
    }

    // -- the sale's header

    function renderSale() {
      const sale = S.sale;
      if (!sale) return;
      $("sale-name").textContent = sale.name;
      $("sale-opens-label").textContent = t(Date.parse(sale.opens_at) <= serverNow() ? "opened_label"
                                                                                  : "opens_label");
      updateTitle();
      const opens = $("sale-opens");
      opens.setAttribute("datetime", sale.opens_at);
      opens.textContent = formatDateTime(sale.opens_at, sale.timezone);
      const price = sale.price_cents > 0 ? t("price_each", { price: formatMoney(sale.price_cents, sale.currency) })
                                         : t("price_free");
      $("sale-price").textContent = `${price} · ${t("limit_per_shopper", { n: sale.per_shopper_limit })}`;
    }

    async function loadSale() {
      const answer = await withRetry(() => api("GET", base), null, 5);
      if (answer.ok) {
        S.sale = answer.data;
        S.opensAt = Date.parse(answer.data.opens_at);
        renderSale();
      }
      return answer;
    }

    // -- joining and polling

    async function join(proof) {
      stopPolling();
      if (!S.shown) show("loading");
      const headers = { ...visitorHeaders(), ...identityHeaders() };
      if (proof) headers["X-Proof-Of-Work"] = proof;
      const answer = await withRetry(
        () => api("POST", `${base}/join`, { headers }),
        (failed, wait) => notice("loading-notice", retryText(failed, wait), "warn"),
      );
      notice("loading-notice", "");
      if (answer.ok) {
        S.ticket = answer.data.ticket;
        S.visitor = answer.data.visitor_id;
        S.proofTries = 0;
        store({ ticket: S.ticket, visitor: S.visitor });
        handleStatus(answer.data);
        return;
      }
      const code = errorCode(answer);
      if (answer.status === 403 && answer.data && answer.data.challenge) {
        return solveAndJoin(answer.data.challenge); // a new place costs a proof of work
      }
      if (answer.status === 401 && (code === "identity_required" || code === "invalid_identity")) {
        S.identity = null;
        store({ identity: null });
        return showMessage("sign_in");
      }
      if (answer.status === 409) return finish(answer.data.state || code);
      if (answer.status === 404) return showMessage("not_found");
      if (answer.status === 400 && S.visitor) { // a stored visitor id the server refuses
        S.visitor = null;
        store({ visitor: null });
        return join();
      }
      showMessage("error", errorMessage(answer));
    }

    /* Solves the challenge in pow.js, showing how far it has got, then joins with the solution
     * (a few tries: a solution refused as spent or expired comes back with a new challenge). */
    async function solveAndJoin(challenge) {
      S.proofTries += 1;
      if (S.proofTries > 3) return showMessage("error", t("proof_failed"));
      show("loading", "proof");
      const bar = $("proof-progress");
      bar.hidden = false;
      bar.value = 0;
      notice("loading-notice", t("proof_working", { percent: 0 }));
      const solved = await solveProof(challenge, (percent) => {
        bar.value = percent;
        notice("loading-notice", t("proof_working", { percent }));
      });
      bar.hidden = true;
      notice("loading-notice", "");
      if (!solved) return showMessage("error", t("proof_failed"));
      return join(solved);
    }

    function solveProof(challenge, onProgress) {
      return new Promise((resolve) => {
        const solver = worker("pow.js");
        if (!solver) return resolve(null);
        solver.onmessage = (event) => {
          const m = event.data;
          if (m.type === "progress") {
            // the chance it would have been found by now: a steady climb towards 100
            onProgress(Math.min(99, Math.round(100 * (1 - Math.exp(-m.tried / m.expected)))));
            return;
          }
          solver.terminate();
          resolve(m.type === "solved" ? m.payload : null);
        };
        solver.onerror = () => {
          solver.terminate();
          resolve(null);
        };
        solver.postMessage({ challenge });
      });
    }

    function retryText(answer, waitMs) {
      const seconds = Math.max(1, Math.round(waitMs / 1000));
      return answer.status === 429 ? t("busy_retry", { s: seconds })
                                   : t("connection_retry", { s: seconds });
    }

    function stopPolling() {
      clearTimeout(S.pollTimer);
      S.pollTimer = null;
      S.pollPending = false;
      S.pollId += 1; // an answer already on its way is ignored
      if (S.poller) S.poller.postMessage({ type: "stop" });
    }

    /* The next poll after `delayMs`: from poller.js when the browser runs workers, else from a
     * timer of the page's own. */
    function schedulePoll(delayMs) {
      stopPolling();
      S.nextPollAt = Date.now() + delayMs;
      S.pollPending = true;
      if (S.poller === undefined) S.poller = startPoller();
      if (S.poller) {
        S.poller.postMessage({ type: "poll", id: S.pollId, url: pollUrl(), headers: pollHeaders(),
                               delayMs, timeoutMs: 15000 });
      } else {
        S.pollTimer = setTimeout(poll, delayMs);
      }
    }

    function startPoller() {
      const poller = worker("poller.js");
      if (!poller) return null;
      poller.onmessage = (event) => {
        const m = event.data;
        if (m.id !== S.pollId || !S.pollPending) return; // stopped or replaced meanwhile
        S.pollPending = false;
        noteServerDate(m.date);
        onPollAnswer({ status: m.status, ok: m.status >= 200 && m.status < 300, data: m.data,
                       retryAfter: parseRetryAfter(m.retryAfter) });
      };
      poller.onerror = () => { // the worker failed: poll from the page from now on
        S.poller = null;
        if (S.pollPending) schedulePoll(Math.max(0, S.nextPollAt - Date.now()));
      };
      return poller;
    }

    function pollUrl() {
      const query = S.hb !== null && S.hb !== undefined ? `?hb=${encodeURIComponent(S.hb)}` : "";
      return `${base}/status${query}`;
    }

    function pollHeaders() {
      return { "X-Queue-Ticket": S.ticket, ...visitorHeaders() };
    }

    function pollDelay(status) {
      // the server staggers a crowd already; a little more jitter keeps tabs apart
      return Math.max(1, status.poll_after_seconds) * 1000 * (1 + Math.random() * 0.1);
    }

    async function poll() {
      S.pollTimer = null;
      const id = S.pollId;
      const answer = await api("GET", pollUrl(), { headers: pollHeaders() });
      if (id !== S.pollId || !S.pollPending) return;
      S.pollPending = false;
      onPollAnswer(answer);
    }

    function onPollAnswer(answer) {
      if (answer.ok) {
        S.pollErrors = 0;
        S.rejoins = 0;
        notice("waiting-notice", "");
        handleStatus(answer.data);
        return;
      }
      if ((answer.status === 401 || answer.status === 410) && S.rejoins < 3) {
        S.rejoins += 1; // a ticket signed with a retired key, or expired: join gives a new one
        return join();
      }
      if (answer.status === 404) return showMessage("not_found");
      if (transient(answer)) {
        const wait = backoff(S.pollErrors++, answer.retryAfter);
        notice("waiting-notice", retryText(answer, wait), "warn");
        schedulePoll(wait);
        return;
      }
      showMessage("error", errorMessage(answer));
    }

    function handleStatus(status) {
      if (status.heartbeat !== null && status.heartbeat !== undefined) S.hb = status.heartbeat;
      switch (status.state) {
        case "not_open":
        case "waiting":
          renderWaiting(status);
          schedulePoll(pollDelay(status));
          break;
        case "admitted":
          S.admission = status.admission_token;
          S.admittedUntil = Date.parse(status.admitted_until);
          S.admissionChecked = false;
          store({ admitted: true });
          announceTurn();
          enterPurchase();
          break;
        case "sold_out":
          if (status.poll_after_seconds !== null && status.poll_after_seconds !== undefined) {
            renderWaiting(status); // sold out for now: held items may come back
            schedulePoll(pollDelay(status));
          } else {
            finish("sold_out");
          }
          break;
        case "closed":
          finish("closed");
          break;
        case "expired":
          finish(S.admission || stored().admitted ? "expired_admission" : "expired_away");
          break;
        default:
          showMessage("error", status.message);
      }
    }

    /* The turn came: say so where a shopper in another tab sees it (the tab's title, and a
     * notification when they allowed one and the page is not in view). */
    function announceTurn() {
      if (!S.sale) return;
      if (document.visibilityState !== "hidden" || !window.Notification
          || Notification.permission !== "granted") return;
      try {
        const note = new Notification(t("notify_title"), {
          body: t("notify_body", { name: S.sale.name }), tag: `flashsale-${saleId}`,
          requireInteraction: true,
        });
        note.onshow = () => { document.body.dataset.notified = "true"; };
        note.onclick = () => { window.focus(); note.close(); };
      } catch (e) { /* e.g. Android Chrome: notifications only from a service worker */ }
    }

    function renderNotify() {
      const supported = "Notification" in window;
      const permission = supported ? Notification.permission : "denied";
      $("notify-button").hidden = permission !== "default";
      $("notify-on").hidden = permission !== "granted";
    }

    function renderWaiting(status) {
      const soldOut = status.state === "sold_out";
      S.prequeue = status.state === "not_open" || status.position === null;
      show("waiting", soldOut ? "sold_out_for_now" : (S.prequeue ? "prequeue" : "waiting"));
      S.title = status.position ? { key: "title_waiting", vars: { position: formatNumber(status.position) } }
                                : null;
      updateTitle();
      renderNotify();
      S.rerender = () => renderWaiting(status);
      $("waiting-title").textContent = t(soldOut ? "sold_out_for_now_title"
                                                 : (S.prequeue ? "prequeue_title" : "waiting_title"));
      $("waiting-intro").textContent = S.prequeue ? t("prequeue_text") : t("waiting_text");
      $("waiting-intro").hidden = soldOut;
      $("waiting-soldout").hidden = !soldOut;
      $("stat-position").textContent = status.position ? `#${formatNumber(status.position)}` : "—";
      $("stat-ahead").textContent = status.ahead !== null && status.ahead !== undefined
        ? formatNumber(status.ahead) : "—";
      const etaLabel = $("stat-eta").previousElementSibling;
      etaLabel.textContent = t(S.prequeue ? "opens_in" : "estimated_wait");
      const progress = $("progress");
      if (status.ahead !== null && status.ahead !== undefined) {
        S.maxAhead = Math.max(S.maxAhead || 0, status.ahead);
        store({ maxAhead: S.maxAhead });
        const done = S.maxAhead > 0 ? (S.maxAhead - status.ahead) / S.maxAhead : 1;
        const percent = Math.round(100 * done);
        progress.value = Math.max(3, percent);
        progress.setAttribute("aria-valuetext", t("progress_value", { percent }));
        $("stat-eta").textContent = soldOut ? "—" : formatEta(status.estimated_wait_seconds);
      } else {
        progress.removeAttribute("value"); // indeterminate before the opening's draw
        progress.removeAttribute("aria-valuetext");
        tick();
      }
      let sentence;
      if (soldOut) sentence = t("live_sold_out_for_now");
      else if (S.prequeue) sentence = t("live_prequeue");
      else sentence = t("live_position", { position: formatNumber(status.position),
                                           ahead: formatNumber(status.ahead) });
      const live = $("waiting-live");
      if (live.textContent !== sentence) live.textContent = sentence;
    }

    async function leave() {
      stopPolling();
      await api("POST", `${base}/leave`, { headers: { "X-Queue-Ticket": S.ticket, ...visitorHeaders() } });
      showMessage("left");
    }

    // -- orders

    async function loadOrders() {
      const answer = await withRetry(() => api("GET", `${base}/orders`, { headers: visitorHeaders() }),
                                     null, 3);
      S.orders = answer.ok ? answer.data.orders : [];
      renderOrders();
      return S.orders;
    }

    function orderLine(order) {
      if (order.seats && order.seats.length) {
        return order.seats.map((s) => t("seat_short", { section: s.section, row: s.row, seat: s.seat }))
          .join(", ");
      }
      return t("items_count", { n: formatNumber(order.quantity) });
    }

    function renderOrders() {
      const list = $("orders-list");
      list.textContent = "";
      for (const order of [...S.orders].reverse()) { // newest first
        const item = el("li", "order");
        const head = el("p", "order-head");
        head.append(el("strong", "", t("order_number", { id: order.id.slice(0, 8).toUpperCase() })),
                    " ", el("span", `badge status-${order.status}`, t(`status_${order.status}`)));
        item.append(head, el("p", "", `${orderLine(order)} · ${formatMoney(order.amount_cents, order.currency)}`));
        list.append(item);
      }
      $("orders").hidden = !(["confirmed", "message"].includes(S.view) && S.orders.length);
    }

    function renderSummary(target, order) {
      target.textContent = "";
      const rows = [[t("summary_items"), orderLine(order)],
                    [t("summary_total"), formatMoney(order.amount_cents, order.currency)],
                    [t("summary_order"), order.id.slice(0, 8).toUpperCase()]];
      for (const [term, value] of rows) {
        const row = el("div");
        row.append(el("dt", "", term), el("dd", "", value));
        target.append(row);
      }
    }

    /* A terminal state: show what the shopper owns first (a hold to pay, a confirmed order). */
    async function finish(kind) {
      stopPolling();
      const orders = await loadOrders();
      const held = orders.find((o) => o.status === "held" || o.status === "paying");
      if (held) return showHold(held);
      const confirmed = orders.filter((o) => o.status === "confirmed");
      if (confirmed.length) return showConfirmed(confirmed[confirmed.length - 1]);
      showMessage(kind);
    }

    // -- messages

    const MESSAGES = {
      sold_out: { retry: false },
      closed: { retry: false },
      expired_away: { retry: false },
      expired_admission: { retry: false },
      declined: { retry: true },
      hold_expired: { retry: true },
      order_failed: { retry: true },
      not_found: { retry: false },
      sign_in: { retry: false },
      left: { retry: true },
      error: { retry: true },
    };

    function showMessage(kind, detail) {
      stopPolling();
      show("message", kind);
      S.rerender = () => showMessage(kind, detail);
      $("message-title").textContent = t(`msg_${kind}_title`);
      $("message-text").textContent = detail && kind === "error" ? detail : t(`msg_${kind}_text`);
      const retry = $("message-retry");
      retry.hidden = !MESSAGES[kind].retry;
      retry.textContent = t(kind === "left" ? "join_again" : "try_again");
      renderOrders();
    }

    // -- purchase

    async function enterPurchase() {
      stopPolling();
      const orders = await loadOrders();
      const held = orders.find((o) => o.status === "held" || o.status === "paying");
      if (held) return showHold(held);
      renderPurchase();
      if (S.sale.seated) loadSeats();
    }

    function renderPurchase() {
      show("purchase");
      S.title = { key: "title_turn", vars: {} };
      updateTitle();
      S.rerender = renderPurchase;
      const sale = S.sale;
      $("quantity-form").hidden = sale.seated;
      $("seat-picker").hidden = !sale.seated;
      const limit = sale.per_shopper_limit;
      fillNumbers($("quantity"), limit);
      fillNumbers($("best-count"), limit);
      $("quantity-hint").textContent = t("limit_per_shopper", { n: limit });
      updateTotals();
      if (sale.seated && S.seats) renderSeatMap();
      tick();
    }

    function fillNumbers(select, count) {
      const keep = Number(select.value) || 1;
      select.textContent = "";
      for (let n = 1; n <= count; n++) select.append(new Option(formatNumber(n), String(n)));
      select.value = String(Math.min(keep, count));
    }

    function updateTotals() {
      const sale = S.sale;
      const n = Number($("quantity").value) || 1;
      $("quantity-total").textContent = formatMoney(n * sale.price_cents, sale.currency);
      $("best-button").textContent = t("best_button", { n: formatNumber(Number($("best-count").value) || 1) });
    }

    function purchaseError(text) {
      notice("purchase-error", text, "error");
    }

    function setBusy(busy) {
      for (const id of ["hold-button", "best-button", "seats-button", "pay-button", "cancel-button",
                        "decline-button"]) {
        const button = $(id);
        if (busy) {
          button.dataset.wasDisabled = button.disabled ? "1" : "";
          button.disabled = true;
        } else {
          button.disabled = button.dataset.wasDisabled === "1";
        }
      }
      document.body.setAttribute("aria-busy", busy ? "true" : "false");
    }

    async function hold(body) {
      purchaseError("");
      let pending = stored().pendingHold;
      if (!pending || JSON.stringify(pending.body) !== JSON.stringify(body)) {
        pending = { key: uuid(), body }; // one key per intent, reused on every retry
        store({ pendingHold: pending });
      }
      setBusy(true);
      const answer = await withRetry(
        () => api("POST", `${base}/holds`, {
          body,
          headers: { Authorization: `Bearer ${S.admission}`, "Idempotency-Key": pending.key,
                     ...visitorHeaders() },
        }),
        (failed, wait) => notice("purchase-error", retryText(failed, wait), "warn"),
        6,
      );
      setBusy(false);
      if (!transient(answer)) store({ pendingHold: null }); // a refusal is final for this key
      if (answer.ok) {
        purchaseError("");
        return showHold(answer.data);
      }
      const code = errorCode(answer);
      const data = answer.data || {};
      switch (code) {
        case "sold_out":
          purchaseError(t("hold_sold_out"));
          if (S.sale.seated) loadSeats();
          break;
        case "insufficient_stock":
          purchaseError(t("hold_insufficient", { n: formatNumber(data.available || 0) }));
          break;
        case "limit_reached":
          purchaseError(t("hold_limit", { n: S.sale.per_shopper_limit }));
          break;
        case "seats_taken":
          purchaseError(t("hold_seats_taken"));
          S.selected.clear();
          loadSeats();
          break;
        case "closed":
          finish("closed");
          break;
        case "not_admitted":
        case "token_expired":
          finish("expired_admission");
          break;
        case "invalid_token":
        case "missing_admission":
          join();
          break;
        default:
          purchaseError(transient(answer) ? t("hold_unavailable") : (errorMessage(answer) || t("msg_error_text")));
      }
    }

    // -- the seat map

    async function loadSeats() {
      const answer = await withRetry(() => api("GET", `${base}/seats`), null, 5);
      if (!answer.ok) {
        purchaseError(t("seats_unavailable"));
        return;
      }
      S.seats = answer.data;
      if (S.view === "purchase") renderSeatMap();
    }

    function seatName(seat) {
      return t("seat_short", { section: seat.section, row: seat.row, seat: seat.seat });
    }

    function renderSeatMap() {
      const map = $("seat-map");
      const focused = document.activeElement && document.activeElement.classList.contains("seat")
        ? Number(document.activeElement.dataset.id) : null;
      map.textContent = "";
      S.grid = [];
      const free = new Set();
      for (const section of S.seats.sections) {
        const block = el("div", "seat-section");
        block.append(el("h3", "", section.name));
        for (const row of section.rows) {
          const line = el("div", "seat-row");
          line.setAttribute("role", "group");
          line.setAttribute("aria-label", t("row_label", { section: section.name, row: row.name }));
          const label = el("span", "row-name", row.name);
          label.setAttribute("aria-hidden", "true");
          line.append(label);
          const buttons = [];
          for (const seat of row.seats) {
            const info = { id: seat.id, section: section.name, row: row.name, seat: seat.seat };
            const button = el("button", "seat", seat.seat);
            button.type = "button";
            button.dataset.id = String(seat.id);
            button.tabIndex = -1;
            const name = t("seat_aria", info);
            if (seat.free) {
              free.add(seat.id);
              button.setAttribute("aria-label", name);
              button.setAttribute("aria-pressed", S.selected.has(seat.id) ? "true" : "false");
            } else {
              button.classList.add("taken");
              button.setAttribute("aria-disabled", "true");
              button.setAttribute("aria-label", `${name}, ${t("legend_taken")}`);
            }
            button.seatInfo = info;
            buttons.push(button);
            line.append(button);
          }
          S.grid.push(buttons);
          block.append(line);
        }
        map.append(block);
      }
      for (const id of [...S.selected.keys()]) if (!free.has(id)) S.selected.delete(id);
      const all = S.grid.flat();
      const start = all.find((b) => Number(b.dataset.id) === focused)
        || all.find((b) => b.getAttribute("aria-pressed") === "true")
        || all.find((b) => !b.classList.contains("taken")) || all[0];
      if (start) start.tabIndex = 0;
      if (start && focused !== null) start.focus();
      updateSelection();
    }

    function updateSelection() {
      for (const button of S.grid.flat()) {
        if (button.classList.contains("taken")) continue;
        const picked = S.selected.has(Number(button.dataset.id));
        button.setAttribute("aria-pressed", picked ? "true" : "false");
        button.classList.toggle("selected", picked);
      }
      const names = [...S.selected.values()].map(seatName);
      $("seat-selection").textContent = names.length
        ? t("seats_chosen", { seats: names.join(", "), n: names.length, max: S.sale.per_shopper_limit })
        : t("seats_none");
      $("seats-button").disabled = names.length === 0;
      $("seats-button").textContent = names.length
        ? t("hold_seats_count", { n: formatNumber(names.length) }) : t("hold_seats_button");
    }

    function toggleSeat(button) {
      const id = Number(button.dataset.id);
      if (button.classList.contains("taken")) {
        purchaseError(t("seat_taken_note"));
        return;
      }
      purchaseError("");
      if (S.selected.has(id)) {
        S.selected.delete(id);
      } else if (S.selected.size >= S.sale.per_shopper_limit) {
        purchaseError(t("seat_limit", { n: S.sale.per_shopper_limit }));
        return;
      } else {
        S.selected.set(id, button.seatInfo);
      }
      updateSelection();
    }

    function moveFocus(button, key) {
      let r = S.grid.findIndex((row) => row.includes(button));
      if (r < 0) return false;
      let c = S.grid[r].indexOf(button);
      if (key === "ArrowLeft") c -= 1;
      else if (key === "ArrowRight") c += 1;
      else if (key === "ArrowUp") r -= 1;
      else if (key === "ArrowDown") r += 1;
      else if (key === "Home") c = 0;
      else if (key === "End") c = S.grid[r].length - 1;
      else return false;
      r = Math.max(0, Math.min(S.grid.length - 1, r));
      c = Math.max(0, Math.min(S.grid[r].length - 1, c));
      const next = S.grid[r][c];
      button.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
      return true;
    }

    // -- hold, pay, cancel

    function showHold(order) {
      S.order = order;
      S.holdExpires = order.hold_expires_at ? Date.parse(order.hold_expires_at) : null;
      S.holdChecked = false;
      S.holdWarned = false;
      store({ order: order.id });
      show("hold", S.payRetryAt ? "payment_unavailable" : "hold");
      S.rerender = () => showHold(S.order);
      renderSummary($("hold-summary"), order);
      $("pay-button").textContent = t("pay_button", { amount: formatMoney(order.amount_cents, order.currency) });
      if (!S.paying) notice("pay-status", "");
      tick();
    }

    async function pay(token) {
      if (S.paying || !S.order) return;
      S.paying = true;
      setBusy(true);
      notice("pay-status", t("paying"));
      const url = `${base}/orders/${S.order.id}/pay`;
      for (let attempt = 0; ; attempt++) {
        const answer = await api("POST", url, { headers: visitorHeaders(), timeoutMs: 30000,
                                                body: { payment_token: token } });
        const code = errorCode(answer);
        if (answer.ok) {
          done();
          return showConfirmed(answer.data);
        }
        if (answer.status === 402) {
          done();
          await loadOrders();
          return showMessage("declined");
        }
        if (transient(answer) || code === "payment_in_progress") {
          if (S.holdExpires && serverNow() > S.holdExpires + 10000) break;
          const wait = backoff(attempt, answer.retryAfter);
          const unavailable = code === "payment_unavailable";
          if (unavailable) document.body.dataset.view = "payment_unavailable";
          S.payRetryAt = Date.now() + wait;
          S.payRetryText = unavailable ? "payment_unavailable" : "payment_retry";
          tick();
          await sleep(wait);
          S.payRetryAt = null;
          notice("pay-status", t("paying"));
          continue;
        }
        done();
        if (code === "hold_expired" || code === "order_released" || code === "order_cancelled") {
          return showMessage("hold_expired");
        }
        if (code === "order_failed") {
          await loadOrders();
          return showMessage("order_failed");
        }
        notice("pay-status", errorMessage(answer) || t("msg_error_text"), "error");
        return;
      }
      done();
      checkHold();

      function done() {
        S.paying = false;
        S.payRetryAt = null;
        setBusy(false);
        if (S.view === "hold") document.body.dataset.view = "hold";
      }
    }

    async function cancelHold() {
      setBusy(true);
      const answer = await withRetry(
        () => api("POST", `${base}/orders/${S.order.id}/cancel`, { headers: visitorHeaders() }),
        null, 4,
      );
      setBusy(false);
      if (!answer.ok) {
        notice("pay-status", errorMessage(answer) || t("msg_error_text"), "error");
        return;
      }
      S.order = null;
      store({ order: null });
      join(); // back to the purchase while the admission lasts, or told it has ended
    }

    async function checkHold() {
      const answer = await withRetry(
        () => api("GET", `${base}/orders/${S.order.id}`, { headers: visitorHeaders() }), null, 4);
      if (!answer.ok) return;
      const order = answer.data;
      if (order.status === "confirmed") return showConfirmed(order);
      if (order.status === "held" || order.status === "paying") {
        S.holdChecked = false; // the server gives a grace period: look again shortly
        S.holdExpires = Math.max(S.holdExpires || 0, serverNow() + 2000);
        return;
      }
      await loadOrders();
      showMessage(order.status === "failed" ? "order_failed" : "hold_expired");
    }

    function showConfirmed(order) {
      S.order = order;
      store({ order: null, pendingHold: null });
      show("confirmed");
      S.rerender = () => showConfirmed(order);
      renderSummary($("confirmed-summary"), order);
      loadOrders();
    }

    // -- the one-second clock: opening, admission and hold countdowns

    function tick() {
      const now = serverNow();
      if (S.view === "waiting" && S.prequeue && S.opensAt) {
        const left = (S.opensAt - now) / 1000;
        $("stat-eta").textContent = left > 0 ? formatClock(left) : t("opening_now");
      }
      if (S.view === "purchase" && S.admittedUntil) {
        const left = (S.admittedUntil - now) / 1000;
        $("admission-countdown").textContent = formatClock(left);
        if (left <= 0 && !S.admissionChecked) {
          S.admissionChecked = true;
          join(); // the server says what comes next (usually: the admission has ended)
        }
      }
      if (S.view === "hold" && S.holdExpires) {
        const left = (S.holdExpires - now) / 1000;
        const countdown = $("hold-countdown");
        countdown.textContent = formatClock(left);
        countdown.classList.toggle("urgent", left <= 60);
        if (left <= 60 && left > 0 && !S.holdWarned) {
          S.holdWarned = true;
          notice("pay-status", t("hold_one_minute"), "warn");
        }
        if (left <= 0 && !S.holdChecked && !S.paying) {
          S.holdChecked = true;
          checkHold();
        }
      }
      if (S.view === "hold" && S.payRetryAt) {
        const seconds = Math.max(1, Math.ceil((S.payRetryAt - Date.now()) / 1000));
        notice("pay-status", t(S.payRetryText, { s: seconds }), "warn");
      }
    }

    // -- wiring

    function wire() {
      setupLanguageSwitch(() => {
        renderSale();
        if (S.rerender) S.rerender();
        if (S.orders.length) renderOrders();
      });
      $("leave-button").addEventListener("click", leave);
      $("notify-button").addEventListener("click", () => { // asked only when the shopper asks
        Notification.requestPermission().then(renderNotify, renderNotify);
      });
      $("quantity").addEventListener("change", updateTotals);
      $("best-count").addEventListener("change", updateTotals);
      $("quantity-form").addEventListener("submit", (event) => {
        event.preventDefault();
        hold({ quantity: Number($("quantity").value) });
      });
      $("best-form").addEventListener("submit", (event) => {
        event.preventDefault();
        hold({ quantity: Number($("best-count").value) });
      });
      $("seats-button").addEventListener("click", () => {
        hold({ seats: [...S.selected.keys()].sort((a, b) => a - b) });
      });
      const map = $("seat-map");
      map.addEventListener("click", (event) => {
        const button = event.target.closest("button.seat");
        if (button) toggleSeat(button);
      });
      map.addEventListener("keydown", (event) => {
        const button = event.target.closest("button.seat");
        if (button && moveFocus(button, event.key)) event.preventDefault();
      });
      $("pay-button").addEventListener("click", () => pay("tok_approve"));
      $("decline-button").addEventListener("click", () => pay("tok_decline"));
      $("cancel-button").addEventListener("click", cancelHold);
      $("message-retry").addEventListener("click", () => {
        S.rejoins = 0;
        show("loading");
        join();
      });
      document.addEventListener("visibilitychange", () => {
        // background tabs' timers are throttled: catch up as soon as the page is seen again
        if (document.visibilityState === "visible" && S.pollPending && Date.now() >= S.nextPollAt + 1000) {
          schedulePoll(0);
        }
      });
      setInterval(tick, 1000);
    }

    async function start() {
      applyLanguage();
      wire();
      const saved = stored();
      S.ticket = saved.ticket || null;
      S.visitor = saved.visitor || null;
      S.maxAhead = saved.maxAhead || null;
      S.identity = takeIdentity();
      show("loading");
      const sale = await loadSale();
      if (!sale.ok) {
        if (sale.status === 404) return showMessage("not_found");
        return showMessage("error", errorMessage(sale) || t("msg_error_text"));
      }
      await join();
    }

    start();
  }

  function main() {
    const kind = document.body.dataset.page;
    if (kind === "sale") salePage();
    else if (kind === "landing") landingPage();
    else {
      applyLanguage();
      setupLanguageSwitch();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
