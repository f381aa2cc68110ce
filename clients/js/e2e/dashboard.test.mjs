// The dashboard in a real headless Chromium against real processes: a gateway
// on Redis (so history survives its restart) and a publisher. The page must
// show what happened before it opened, show new events at once, say when it
// is reconnecting and then catch up with everything it missed, and work over
// the SSE fallback when WebSockets are blocked. Values render as text only.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Stack, launchChromium, screenshotDir, waitFor } from "./harness.mjs";

const WS = "e2e";
let stack;
let browser;
let page;
let token;

const now = () => new Date().toISOString();
const XSS = `<img src=x onerror="window.__pwned=1">`;

/** Five minutes of host metrics, one every 10 s, ending at cpu 42.5 % and memory 61.2 %. */
function hostSeries() {
  const points = 30;
  return Array.from({ length: points }, (_, i) => {
    const last = i === points - 1;
    return {
      type: "metrics_update",
      entity_ref: "host:default/web-1",
      timestamp: new Date(Date.now() - (points - 1 - i) * 10000).toISOString(),
      data: { metrics: { cpu: last ? 42.5 : 30 + 15 * Math.sin(i / 3) + (i % 4), memory: last ? 61.2 : 55 + i / 5, processes: 180, storage: [{ mount: "/", used_percent: 71.3 }] } },
    };
  });
}

/** What a platform's services published before anyone opened the page. */
function seed() {
  const entity = (name, owner, extra = {}) => ({
    type: "entity_update",
    entity_ref: `component:default/${name}`,
    data: { kind: "Component", namespace: "default", name, change_type: "updated", entity: { metadata: { name, ...extra }, spec: { type: "service", owner, lifecycle: "production" } } },
  });
  return [
    entity("checkout", "team-payments", { description: "Takes the money" }),
    entity("search", "team-discovery"),
    entity("xss-probe", "team-red", { title: XSS }),
    { type: "health_update", entity_ref: "component:default/checkout", data: { health: { level: "error", message: "p99 over budget", timestamp: now() } } },
    { type: "health_update", entity_ref: "component:default/search", data: { health: { level: "info", message: "all good", timestamp: now() } } },
    { type: "deployment_update", entity_ref: "component:default/checkout", data: { deployment: { id: "deploy-1", version: "v1.4.0", environment: "production", status: "success", start_time: now(), url: "https://ci.example/deploy-1" } } },
    { type: "deployment_update", entity_ref: "component:default/search", data: { deployment: { id: "deploy-2", version: "v2.0.1", environment: "staging", status: "in_progress", start_time: now(), url: "javascript:alert(1)" } } },
    { type: "pipeline_update", entity_ref: "component:default/search", data: { pipeline: { id: "9001", name: "ci", provider: "github", status: "failed", ref: "main", commit: "0123456789abcdef", url: "https://github.example/run/9001" } } },
    { type: "alert", entity_ref: "component:default/search", data: { type: "latency", message: "low priority thing", priority: "low" } },
    { type: "alert", entity_ref: "component:default/checkout", data: { type: "error_rate", message: "checkout error rate 12%", priority: "critical" } },
    { type: "alert", data: { type: "disk", message: "disk 80% full", priority: "medium" } },
    ...hostSeries(),
    { type: "metrics_update", entity_ref: "component:default/checkout", data: { metrics: { cpu: 12, memory: 30, requests: 1520, errors: 3, response_time: 87 } } },
    { type: "log_entry", data: { task_id: "build-7", level: "info", message: "history line one", timestamp: now() } },
    { type: "log_entry", data: { task_id: "build-7", level: "error", message: `history ${XSS} line two`, timestamp: now() } },
    { type: "log_batch", data: { task_id: "build-8", entries: [
      { task_id: "build-8", level: "debug", message: "batched debug line", timestamp: now() },
      { task_id: "build-8", level: "warn", message: "batched warn line", timestamp: now() },
    ] } },
    { type: "custom.thing", data: { note: "a type the page has no panel for" } },
  ];
}

const statusIs = (p, status) => p.waitForFunction((s) => document.body.dataset.status === s, status, { timeout: 20000 });
const textOf = (p, selector) => p.locator(selector).innerText();
const logMessages = (p) => p.$$eval("#logs li .message", (rows) => rows.map((r) => r.textContent));

before(async () => {
  stack = await Stack.start();
  token = stack.token(WS);
  browser = await launchChromium();
  await stack.publish(WS, seed());
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function openPage(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1300 }, colorScheme: options.colorScheme ?? "light" });
  const p = await context.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(e.message));
  p.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  if (options.init) await p.addInitScript(options.init);
  await p.goto(`${stack.gatewayUrl}/#token=${token}`);
  p.errors = errors;
  return p;
}

test("the page shows what was published before it opened, as text", async () => {
  page = await openPage();
  await statusIs(page, "connected");
  await waitFor("the catalog", async () => (await page.locator("#catalog tr[data-ref]").count()) === 3);
  assert.match(await textOf(page, "#workspace"), /^e2e$/);

  const catalog = await textOf(page, "#catalog");
  assert.match(catalog, /checkout[\s\S]*team-payments/);
  assert.match(catalog, /search[\s\S]*team-discovery/);
  assert.equal(await page.locator('#catalog tr[data-ref="component:default/checkout"] .badge').innerText(), "down");
  assert.equal(await page.locator('#catalog tr[data-ref="component:default/search"] .badge').innerText(), "healthy");
  assert.equal(await page.locator('#health li[data-ref="component:default/checkout"] .message').innerText(), "p99 over budget");

  const feed = await textOf(page, "#deployments");
  assert.match(feed, /checkout v1\.4\.0/);
  assert.match(feed, /search v2\.0\.1/);
  assert.match(feed, /ci[\s\S]*github · main · 01234567/);
  assert.equal(await page.locator('#deployments [data-key="d:component:default/checkout:deploy-1"] a').getAttribute("href"), "https://ci.example/deploy-1");
  assert.equal(await page.locator('#deployments [data-key="d:component:default/search:deploy-2"] a').count(), 0, "a javascript: URL is not a link");

  const priorities = await page.$$eval("#alerts li", (rows) => rows.map((r) => r.dataset.priority));
  assert.deepEqual(priorities, ["critical", "medium", "low"]);

  assert.match(await textOf(page, "#metrics-figures"), /web-1[\s\S]*42\.5 %[\s\S]*61\.2 %/);
  assert.match(await textOf(page, "#service-metrics"), /checkout[\s\S]*1520/);

  assert.deepEqual(await logMessages(page), ["history line one", `history ${XSS} line two`, "batched debug line", "batched warn line"]);
  assert.match(await textOf(page, "#events"), /custom\.thing/);
  assert.equal(await textOf(page, "#event-count"), String(seed().length));

  // Markup in events stayed text: no element was made from it, nothing ran.
  assert.match(catalog, /<img src=x onerror/);
  assert.equal(await page.locator("main img").count(), 0);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.deepEqual(page.errors, []);
});

test("the log level filter, pause, resume and clear", async () => {
  await page.selectOption("#logs-level", "warn");
  const visible = () => page.$$eval("#logs li:not([hidden]) .message", (rows) => rows.map((r) => r.textContent));
  assert.deepEqual(await visible(), [`history ${XSS} line two`, "batched warn line"]);
  await page.selectOption("#logs-level", "trace");

  await page.click("#logs-pause");
  await stack.publish(WS, [{ type: "log_entry", data: { task_id: "t", level: "info", message: "while paused", timestamp: now() } }]);
  await waitFor("the paused count", async () => (await textOf(page, "#logs-waiting")) === "paused · 1 new");
  assert.ok(!(await logMessages(page)).includes("while paused"));
  await page.click("#logs-pause");
  assert.equal((await logMessages(page)).at(-1), "while paused");

  await page.click("#logs-clear");
  assert.deepEqual(await logMessages(page), []);
  // Clearing empties the view, not the stream.
  const after = [
    { type: "log_entry", data: { task_id: "deploy-live", level: "info", message: "rolling out v1.5.0 to production", timestamp: now() } },
    { type: "log_batch", data: { task_id: "deploy-live", entries: [
      { task_id: "deploy-live", level: "info", message: "3/3 replicas ready", timestamp: now() },
      { task_id: "deploy-live", level: "warn", message: "readiness took 41 s (budget 30 s)", timestamp: now() },
    ] } },
  ];
  await stack.publish(WS, after);
  await waitFor("the lines after clear", async () => (await logMessages(page)).length === 3);
  assert.deepEqual(await logMessages(page), ["rolling out v1.5.0 to production", "3/3 replicas ready", "readiness took 41 s (budget 30 s)"]);
});

test("a deployment published after load appears within a second, with a toast", async () => {
  const publishedAt = Date.now();
  await stack.publish(WS, [{ type: "deployment_update", entity_ref: "component:default/checkout", data: { deployment: { id: "deploy-live", version: "v1.5.0", environment: "production", status: "in_progress", start_time: now() } } }]);
  const row = page.locator('#deployments [data-key="d:component:default/checkout:deploy-live"]');
  await row.waitFor({ timeout: 10000 });
  const receivedAt = Number(await row.getAttribute("data-received-at"));
  assert.ok(receivedAt - publishedAt < 1000, `shown ${receivedAt - publishedAt} ms after the publish`);
  assert.match(await textOf(page, "#toasts"), /Deployment in progress[\s\S]*checkout v1\.5\.0/);

  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, "dashboard.png"), fullPage: true });
  const dark = await openPage({ colorScheme: "dark" });
  await statusIs(dark, "connected");
  await waitFor("the dark page's catalog", async () => (await dark.locator("#catalog tr[data-ref]").count()) === 3);
  await dark.screenshot({ path: join(screenshotDir, "dashboard-dark.png"), fullPage: true });
  await dark.context().close();
});

test("with its gateway stopped the page says reconnecting, then catches up with every event published meanwhile", async () => {
  await stack.gateway.stop("SIGTERM");
  await statusIs(page, "reconnecting");
  await waitFor("a countdown and a retry button", async () => /reconnecting/.test(await textOf(page, "#status-text")) && (await page.locator("#retry").isVisible()));

  const missed = Array.from({ length: 40 }, (_, i) => ({ type: "log_entry", data: { task_id: "outage", level: "info", message: `missed #${i}`, timestamp: now() } }));
  await stack.publish(WS, missed.slice(0, 20));
  await stack.publish(WS, missed.slice(20));
  await stack.startGateway();
  // The button skips what is left of the backoff; the client would get there alone, later.
  if (await page.locator("#retry").isVisible()) await page.click("#retry").catch(() => {});
  await statusIs(page, "connected");
  const before = 3; // the lines of the clear test
  await waitFor("every missed event", async () => (await logMessages(page)).length >= before + missed.length);
  assert.deepEqual((await logMessages(page)).slice(before), missed.map((e) => e.data.message), "each missed event once, in order");
  assert.deepEqual(page.errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(e)), []);
});

test("with WebSockets blocked the page runs over Server-Sent Events", async () => {
  // What a proxy that refuses upgrades does: every WebSocket fails before it opens.
  const blockWebSockets = () => {
    window.WebSocket = class {
      constructor() {
        this.readyState = 3;
        setTimeout(() => {
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: "" });
        }, 5);
      }
      send() {}
      close() {}
    };
  };
  const sse = await openPage({ init: blockWebSockets });
  await sse.waitForFunction(() => document.body.dataset.status === "connected" && document.body.dataset.transport === "sse", null, { timeout: 20000 });
  assert.equal(await textOf(sse, "#transport"), "fallback: Server-Sent Events");
  await stack.publish(WS, [{ type: "deployment_update", entity_ref: "component:default/search", data: { deployment: { id: "deploy-sse", version: "v2.1.0", environment: "production", status: "success", start_time: now() } } }]);
  await sse.locator('#deployments [data-key="d:component:default/search:deploy-sse"]').waitFor({ timeout: 10000 });
  assert.match(await textOf(sse, "#catalog"), /checkout/);
  await sse.context().close();
});
