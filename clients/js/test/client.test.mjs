// Unit tests of the browser client with fake sockets, a fake fetch and a
// manual clock: backoff timing, fallback and return, visibility, de-duplication
// and the close codes. Run by `npm test` (node's test runner).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, TidingsClient, parseSseBlock } from "../dist/index.js";

/** A manual clock: timers run only when the test advances time. */
function clock() {
  let now = 0;
  let next = 1;
  const timers = new Map();
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = next++;
      timers.set(id, { at: now + ms, fn });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    async advance(ms) {
      const until = now + ms;
      for (;;) {
        const due = [...timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
        await settle();
      }
      now = until;
      await settle();
    },
    pending: () => timers.size,
  };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

/** Fake WebSockets: every one made is recorded; the test opens and closes them. */
function sockets() {
  const made = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      made.push(this);
      if (FakeWebSocket.refuse) {
        queueMicrotask(() => this.serverClose(1006));
      }
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close() {
      this.readyState = 3;
    }
    accept(hello = {}) {
      this.readyState = 1;
      this.onmessage?.({ data: JSON.stringify({ type: "connected", connection_id: "c", workspace_id: "w", user_id: "u", server: "gw", heartbeat_ms: 25000, expires_at: "", ...hello }) });
    }
    push(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    serverClose(code) {
      this.readyState = 3;
      this.onclose?.({ code });
    }
  }
  FakeWebSocket.refuse = false;
  return { FakeWebSocket, made };
}

const ev = (id, type = "t") => ({ type, id, workspace_id: "w", data: {} });

function client(extra = {}) {
  const c = clock();
  const { FakeWebSocket, made } = sockets();
  const events = [];
  const states = [];
  let reloads = 0;
  const fetches = [];
  const options = {
    url: "http://gw.test",
    workspaceId: "w",
    token: "tok",
    backoff: { initialMs: 1000, maxMs: 30000 },
    onEvent: (e) => events.push(e),
    onState: (s) => states.push(s),
    onReload: () => reloads++,
    ...extra,
    env: {
      WebSocket: FakeWebSocket,
      setTimeout: c.setTimeout,
      clearTimeout: c.clearTimeout,
      now: c.now,
      random: () => 0.5,
      fetch: async (url, init) => {
        fetches.push(url);
        if (extra.fetch) return extra.fetch(url, init);
        throw new Error("no network");
      },
      ...(extra.env ?? {}),
    },
  };
  const tc = new TidingsClient(options);
  return { tc, clock: c, made, FakeWebSocket, events, states, fetches, reloads: () => reloads };
}

test("backoff is exponential with full jitter under a cap", () => {
  const b = new Backoff({ initialMs: 1000, maxMs: 30000 }, () => 0.5);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 9].map((a) => b.ceiling(a)), [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(b.delay(3), 4000, "uniform in 0..ceiling: half of 8 s at random 0.5");
  const spread = new Set(Array.from({ length: 50 }, () => new Backoff({}).delay(4)));
  assert.ok(spread.size > 10, "real randomness spreads the delays");
  assert.ok(new Backoff({ maxAttempts: 3 }).exhausted(3) && !new Backoff({}).exhausted(1000));
});

test("a reconnect resumes with since and drops ids already delivered", async () => {
  const t = client();
  t.tc.start();
  await settle();
  t.made[0].accept();
  t.made[0].push(ev("1-0"));
  t.made[0].push({ type: "batch", events: [ev("2-0"), ev("3-0")] });
  t.made[0].serverClose(1006);
  assert.equal(t.tc.connection.status, "reconnecting");
  assert.equal(t.tc.connection.nextRetryAt, 500, "full jitter of the first 1 s ceiling");
  await t.clock.advance(500);
  assert.match(t.made[1].url, /since=3-0/);
  t.made[1].accept();
  t.made[1].push(ev("2-0")); // replayed overlap
  t.made[1].push(ev("3-0"));
  t.made[1].push(ev("4-0"));
  t.made[1].push({ type: "t", workspace_id: "w", data: "live-only" });
  assert.deepEqual(t.events.map((e) => e.id), ["1-0", "2-0", "3-0", "4-0", undefined]);
});

test("close codes: 1012 at once, 4001 asks for a token, 4003 stops, recovered false reloads", async () => {
  const asked = [];
  const t = client({ token: (why) => (asked.push(why), `tok-${asked.length}`) });
  t.tc.start();
  await settle();
  t.made[0].accept({ recovered: false });
  assert.equal(t.reloads(), 1);
  t.made[0].serverClose(1012);
  assert.ok(t.tc.connection.nextRetryAt <= 1000, "draining: reconnect within a second");
  await t.clock.advance(1000);
  t.made[1].accept();
  t.made[1].serverClose(4001);
  await t.clock.advance(0);
  assert.deepEqual(asked, ["initial", "expired"]);
  assert.match(t.made[2].url, /token=tok-2/);
  t.made[2].accept();
  t.made[2].serverClose(4003);
  assert.equal(t.tc.connection.status, "disconnected");
  assert.equal(t.tc.connection.reason, "forbidden");
  await t.clock.advance(60000);
  assert.equal(t.made.length, 3, "no reconnect after 4003");
});

test("falls back to SSE when WebSockets fail, and returns when a probe connects", async () => {
  let sseController;
  const t = client({
    fallbackAfter: 2,
    probeEveryMs: 10000,
    fetch: async (url) => {
      assert.match(url, /events\/stream/);
      const body = new ReadableStream({ start: (c) => (sseController = c) });
      return { ok: true, status: 200, body };
    },
  });
  t.FakeWebSocket.refuse = true;
  t.tc.start();
  await settle();
  await t.clock.advance(500); // first backoff
  await settle();
  await t.clock.advance(1000); // second backoff, now on SSE
  await settle();
  assert.equal(t.tc.connection.transport, "sse");
  const enc = new TextEncoder();
  sseController.enqueue(enc.encode(`event: connected\ndata: {"type":"connected","connection_id":"c","workspace_id":"w","user_id":"u","server":"gw","heartbeat_ms":1,"expires_at":""}\n\n`));
  sseController.enqueue(enc.encode(`: heartbeat\n\nevent: t\nid: 5-0\ndata: {"type":"t","id":"5-0","workspace_id":"w","data":{}}\n\n`));
  await settle();
  assert.equal(t.tc.connection.status, "connected");
  assert.deepEqual(t.events.map((e) => e.id), ["5-0"]);

  t.FakeWebSocket.refuse = false;
  await t.clock.advance(10000); // the probe
  const probe = t.made.at(-1);
  assert.match(probe.url, /since=5-0/, "the probe resumes where SSE was");
  probe.accept();
  probe.push(ev("6-0"));
  assert.equal(t.tc.connection.transport, "websocket", "back on WebSocket");
  assert.deepEqual(t.events.map((e) => e.id), ["5-0", "6-0"]);
});

test("polling is the last fallback", async () => {
  let polls = 0;
  const t = client({
    transports: ["polling"],
    pollEveryMs: 2000,
    fetch: async (url) => {
      polls++;
      const since = new URL(url).searchParams.get("since");
      const events = since === null ? [ev("1-0")] : since === "1-0" ? [ev("2-0")] : [];
      return { ok: true, status: 200, json: async () => ({ events, next: events.at(-1)?.id ?? since ?? "0-0", recovered: true }) };
    },
  });
  t.tc.start();
  await settle();
  await settle();
  assert.equal(t.tc.connection.status, "connected");
  assert.equal(t.tc.connection.transport, "polling");
  await t.clock.advance(2000);
  await settle();
  assert.deepEqual(t.events.map((e) => e.id), ["1-0", "2-0"]);
  assert.ok(polls >= 2);
});

test("the heartbeat pauses while the tab is hidden and checks at once when shown", async () => {
  const listeners = [];
  const document = { visibilityState: "visible", addEventListener: (_type, fn) => listeners.push(fn) };
  const t = client({ pingEveryMs: 20000, pongTimeoutMs: 5000, env: { document } });
  t.tc.start();
  await settle();
  const ws = t.made[0];
  ws.accept();
  await t.clock.advance(20000);
  assert.deepEqual(ws.sent.map((m) => m.type), ["ping"]);
  ws.push({ type: "pong", timestamp: "" });
  document.visibilityState = "hidden";
  listeners.forEach((fn) => fn());
  await t.clock.advance(60000);
  assert.equal(ws.sent.length, 1, "no pings while hidden");
  document.visibilityState = "visible";
  listeners.forEach((fn) => fn());
  assert.equal(ws.sent.length, 2, "a ping as soon as the tab is visible");
  await t.clock.advance(5000); // no pong: the socket is dead
  assert.equal(t.tc.connection.status, "reconnecting");
});

test("messages wait in a bounded queue while disconnected and the filter is re-applied", async () => {
  const t = client({ outgoingQueue: 2 });
  assert.equal(t.tc.send({ type: "subscribe", id: 1, event_types: ["deploy"] }), true);
  assert.equal(t.tc.send({ type: "ping", id: 2 }), true);
  assert.equal(t.tc.send({ type: "ping", id: 3 }), false, "the queue is full");
  t.tc.start();
  await settle();
  assert.match(t.made[0].url, /event_types=deploy/);
  t.made[0].accept();
  assert.deepEqual(t.made[0].sent.map((m) => m.id), [1, 2]);
  t.made[0].serverClose(1006);
  await t.clock.advance(1000);
  assert.match(t.made[1].url, /event_types=deploy/, "after a reconnect too");
});

test("SSE blocks are parsed with comments skipped and data lines joined", () => {
  assert.deepEqual(parseSseBlock("event: t\nid: 1-0\ndata: a\ndata: b"), { event: "t", data: "a\nb" });
  assert.deepEqual(parseSseBlock(": keep-alive"), { event: "message", data: undefined });
});

test("the connected message reaches onMessage, so a page can show which server it is on", async () => {
  const messages = [];
  const t = client({ onMessage: (m) => messages.push(m) });
  t.tc.start();
  await settle();
  t.made[0].accept({ server: "gw-7" });
  t.made[0].push({ type: "pong", id: 1, timestamp: "" });
  assert.deepEqual(messages.map((m) => [m.type, m.server]), [["connected", "gw-7"], ["pong", undefined]]);
});
