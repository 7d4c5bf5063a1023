/* FlashSale status poller, run as a dedicated Worker by app.js.
 *
 * A waiter who stops polling for the sale's abandonment window is skipped when their turn
 * comes. Browsers throttle the timers of a page in a background tab (Chrome: a chain of timers
 * runs at most once a minute after the tab has been hidden a while), and a poll that late
 * misses the window. A dedicated worker's timers are not throttled that way (measured: see the
 * docs/pages.md, "In a background tab"), so the page hands each poll to this worker: it waits
 * the delay the server asked for, fetches the status with the page's headers and cookie, and
 * posts back what the API answered. The page decides everything else.
 *
 * Messages in: {type: "poll", id, url, headers, delayMs, timeoutMs} or {type: "stop"}.
 * Messages out: {id, status, data, retryAfter, date} (status 0 when the request failed).
 */
"use strict";

let timer = null;

async function fetchStatus(message) {
  const controller = new AbortController();
  const abort = setTimeout(() => controller.abort(), message.timeoutMs || 15000);
  try {
    const response = await fetch(message.url, {
      method: "GET", credentials: "same-origin", cache: "no-store",
      headers: { Accept: "application/json", ...message.headers }, signal: controller.signal,
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { id: message.id, status: response.status, data,
             retryAfter: response.headers.get("retry-after"), date: response.headers.get("date") };
  } catch (e) {
    return { id: message.id, status: 0, data: null, retryAfter: null, date: null };
  } finally {
    clearTimeout(abort);
  }
}

self.onmessage = (event) => {
  const message = event.data;
  clearTimeout(timer);
  timer = null;
  if (message.type !== "poll") return;
  timer = setTimeout(async () => {
    timer = null;
    postMessage(await fetchStatus(message));
  }, Math.max(0, message.delayMs));
};
