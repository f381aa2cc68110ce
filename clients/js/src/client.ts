// The reconnecting browser client. One `TidingsClient` keeps one workspace
// live: WebSocket first, then Server-Sent Events, then polling when the
// transports before fail, and back to WebSocket as soon as a probe connects.
// It resumes with `since` and drops ids it has delivered, follows the close
// codes of SPEC §3.4, pauses its heartbeat while the tab is hidden and checks
// the connection when it is shown again. Every I/O primitive comes from an
// injectable environment, so the unit tests drive it with fakes and a clock.

import { Backoff, type BackoffOptions } from "./backoff.js";
import { CLOSE, SERVER_MESSAGE_TYPES, compareIds, type ClientMessage, type ServerMessage, type TidingsEvent } from "./protocol.js";

export type Transport = "websocket" | "sse" | "polling";
export type Status = "connecting" | "connected" | "reconnecting" | "disconnected";

export interface ConnectionState {
  status: Status;
  transport: Transport;
  /** Failed attempts in a row. */
  attempt: number;
  /** With `reconnecting`: when the next try starts (env.now() time, ms). */
  nextRetryAt?: number;
  /** With `disconnected`: why. */
  reason?: string;
}

export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface Environment {
  WebSocket: new (url: string) => WebSocketLike;
  fetch: typeof fetch;
  setTimeout: (fn: () => void, ms: number) => unknown;
  clearTimeout: (handle: unknown) => void;
  now: () => number;
  random: () => number;
  /** The page, for visibility; absent outside browsers. */
  document?: { visibilityState: string; addEventListener(type: "visibilitychange", fn: () => void): void };
}

export type TokenSource = string | ((why: "initial" | "expired") => Promise<string | null> | string | null);

export interface ClientOptions {
  /** The gateway's base URL, `http(s)://host:port`. */
  url: string;
  workspaceId: string;
  token: TokenSource;
  eventTypes?: string[];
  entityRefs?: string[];
  /** Resume after this id on the first connection. */
  since?: string;
  backoff?: BackoffOptions;
  pingEveryMs?: number;
  pongTimeoutMs?: number;
  /** In order of preference (default all three). */
  transports?: Transport[];
  /** Failures of a transport in a row before the next one is tried (default 2). */
  fallbackAfter?: number;
  /** While on a fallback, how often WebSocket is tried again (default 30 s). */
  probeEveryMs?: number;
  pollEveryMs?: number;
  /** Messages kept while they cannot be sent (default 100). */
  outgoingQueue?: number;
  onEvent?: (event: TidingsEvent) => void;
  onState?: (state: ConnectionState) => void;
  /** History no longer reaches back to where the client was: reload the state. */
  onReload?: () => void;
  /** Replies and other server messages. */
  onMessage?: (message: ServerMessage) => void;
  env?: Partial<Environment>;
}

const OPEN = 1;

export class TidingsClient {
  private readonly env: Environment;
  private readonly backoff: Backoff;
  private readonly transports: Transport[];
  private transportIndex = 0;
  private failures = 0;
  private transportFailures = 0;
  private lastId: string | undefined;
  private token: string | null = null;
  private tokenWhy: "initial" | "expired" = "initial";
  private state: ConnectionState;
  private stopped = false;
  private ws: WebSocketLike | null = null;
  private stream: AbortController | null = null;
  private timers = new Set<unknown>();
  private pingTimer: unknown = null;
  private pongDeadline: unknown = null;
  private probe: WebSocketLike | null = null;
  private queue: ClientMessage[] = [];
  private eventTypes: string[] | undefined;
  private entityRefs: string[] | undefined;

  constructor(private readonly options: ClientOptions) {
    const g = globalThis as unknown as Partial<Environment>;
    this.env = {
      WebSocket: options.env?.WebSocket ?? (g.WebSocket as Environment["WebSocket"]),
      fetch: options.env?.fetch ?? g.fetch!.bind(globalThis),
      setTimeout: options.env?.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
      clearTimeout: options.env?.clearTimeout ?? ((h) => globalThis.clearTimeout(h as number)),
      now: options.env?.now ?? (() => Date.now()),
      random: options.env?.random ?? Math.random,
      document: options.env?.document ?? (g as { document?: Environment["document"] }).document,
    };
    this.backoff = new Backoff(options.backoff, this.env.random);
    this.transports = options.transports ?? ["websocket", "sse", "polling"];
    this.lastId = options.since;
    this.eventTypes = options.eventTypes;
    this.entityRefs = options.entityRefs;
    this.state = { status: "connecting", transport: this.transports[0], attempt: 0 };
    this.env.document?.addEventListener("visibilitychange", () => this.onVisibility());
  }

  /** Starts connecting. */
  start(): void {
    void this.connect();
  }

  /** Stops for good. */
  stop(): void {
    this.stopped = true;
    this.teardown();
    this.setState({ status: "disconnected", transport: this.current(), attempt: this.failures, reason: "stopped" });
  }

  /** The connection state now. */
  get connection(): ConnectionState {
    return this.state;
  }

  /** Reconnects now, skipping the wait (a "retry" button). */
  retryNow(): void {
    if (this.state.status === "reconnecting") {
      this.clearTimers();
      void this.connect();
    }
  }

  /** Sends a message, or queues it while it cannot be sent; false when the queue is full. */
  send(message: ClientMessage): boolean {
    this.rememberFilter(message);
    if (this.ws && this.ws.readyState === OPEN && this.state.status === "connected") {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    if (this.queue.length >= (this.options.outgoingQueue ?? 100)) return false;
    this.queue.push(message);
    return true;
  }

  private current(): Transport {
    return this.transports[this.transportIndex];
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    this.options.onState?.(state);
  }

  private later(fn: () => void, ms: number): unknown {
    const handle = this.env.setTimeout(() => {
      this.timers.delete(handle);
      fn();
    }, ms);
    this.timers.add(handle);
    return handle;
  }

  private clearTimers(): void {
    for (const t of this.timers) this.env.clearTimeout(t);
    this.timers.clear();
    this.pingTimer = null;
    this.pongDeadline = null;
  }

  private teardown(): void {
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.close(CLOSE.NORMAL);
    }
    if (this.probe) {
      this.probe.onclose = null;
      this.probe.onmessage = null;
      this.probe.close(CLOSE.NORMAL);
      this.probe = null;
    }
    this.stream?.abort();
    this.stream = null;
  }

  private query(includeToken: boolean): string {
    const q = new URLSearchParams();
    if (includeToken && this.token) q.set("token", this.token);
    q.set("workspace_id", this.options.workspaceId);
    if (this.eventTypes) q.set("event_types", this.eventTypes.join(","));
    if (this.entityRefs) q.set("entity_refs", this.entityRefs.join(","));
    if (this.lastId) q.set("since", this.lastId);
    return q.toString();
  }

  private wsUrl(): string {
    return `${this.options.url.replace(/^http/, "ws").replace(/\/$/, "")}/ws?${this.query(true)}`;
  }

  private httpUrl(path: string): string {
    return `${this.options.url.replace(/\/$/, "")}/v1/workspaces/${encodeURIComponent(this.options.workspaceId)}/${path}?${this.query(false)}`;
  }

  private async ensureToken(): Promise<boolean> {
    if (this.token && this.tokenWhy === "initial") return true;
    const source = this.options.token;
    const token = typeof source === "string" ? source : await source(this.tokenWhy);
    this.tokenWhy = "initial";
    this.token = token;
    return token !== null;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.teardown();
    this.setState({ status: this.failures === 0 ? "connecting" : "reconnecting", transport: this.current(), attempt: this.failures });
    if (!(await this.ensureToken())) {
      this.stopped = true;
      this.setState({ status: "disconnected", transport: this.current(), attempt: this.failures, reason: "no token" });
      return;
    }
    switch (this.current()) {
      case "websocket":
        this.openWebSocket();
        break;
      case "sse":
        void this.openSse();
        break;
      case "polling":
        void this.poll(true);
        break;
    }
  }

  private openWebSocket(): void {
    let ws: WebSocketLike;
    try {
      ws = new this.env.WebSocket(this.wsUrl());
    } catch {
      this.failed(undefined);
      return;
    }
    this.ws = ws;
    let connected = false;
    ws.onmessage = (ev) => {
      const text = typeof ev.data === "string" ? ev.data : "";
      if (!connected) {
        connected = this.onConnected(text, "websocket");
        return;
      }
      this.onFrame(text);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onClosed(ev.code, connected);
    };
    ws.onerror = () => {};
  }

  /** Handles the `connected` message of any transport; false when it was not one. */
  private onConnected(text: string, transport: Transport): boolean {
    let hello: ServerMessage;
    try {
      hello = JSON.parse(text) as ServerMessage;
    } catch {
      return false;
    }
    if (hello.type !== "connected") return false;
    this.failures = 0;
    this.transportFailures = 0;
    if (hello.recovered === false) this.options.onReload?.();
    this.setState({ status: "connected", transport, attempt: 0 });
    if (transport !== "polling") this.options.onMessage?.(hello);
    if (transport === "websocket") {
      this.flushQueue();
      this.schedulePing();
    } else {
      this.scheduleProbe();
    }
    return true;
  }

  private flushQueue(): void {
    const queued = this.queue;
    this.queue = [];
    for (const m of queued) this.ws?.send(JSON.stringify(m));
  }

  private onFrame(text: string): void {
    let message: { type?: string } & Record<string, unknown>;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const type = message.type ?? "";
    if (!(SERVER_MESSAGE_TYPES as readonly string[]).includes(type)) {
      this.deliver(message as unknown as TidingsEvent);
      return;
    }
    const server = message as unknown as ServerMessage;
    if (server.type === "pong") {
      if (this.pongDeadline) this.env.clearTimeout(this.pongDeadline);
      this.timers.delete(this.pongDeadline);
      this.pongDeadline = null;
      if (server.id === undefined) return;
    }
    if (server.type === "batch") {
      for (const e of server.events) this.deliver(e);
      return;
    }
    if (server.type === "subscribed" && server.recovered === false) this.options.onReload?.();
    this.options.onMessage?.(server);
  }

  /** At most once per id: a replay after a reconnect overlaps what was delivered. */
  private deliver(event: TidingsEvent): void {
    if (event.id !== undefined) {
      if (this.lastId !== undefined && compareIds(event.id, this.lastId) <= 0) return;
      this.lastId = event.id;
    }
    this.options.onEvent?.(event);
  }

  private schedulePing(): void {
    const every = this.options.pingEveryMs ?? 20000;
    this.pingTimer = this.later(() => {
      this.pingTimer = null;
      if (this.isHidden()) return; // resumed by the visibility handler
      this.sendPing();
      this.schedulePing();
    }, every);
  }

  private sendPing(): void {
    if (!this.ws || this.ws.readyState !== OPEN) return;
    this.ws.send(JSON.stringify({ type: "ping" }));
    if (!this.pongDeadline) {
      this.pongDeadline = this.later(() => {
        this.pongDeadline = null;
        // No pong in time: the connection is dead even if the socket says otherwise.
        const ws = this.ws;
        this.ws = null;
        if (ws) {
          ws.onclose = null;
          ws.close();
        }
        this.onClosed(undefined, true);
      }, this.options.pongTimeoutMs ?? 10000);
    }
  }

  private isHidden(): boolean {
    return this.env.document?.visibilityState === "hidden";
  }

  private onVisibility(): void {
    if (this.stopped || this.isHidden()) return;
    if (this.state.status === "connected" && this.current() === "websocket") {
      // Check at once: a laptop that slept may hold a dead socket.
      this.sendPing();
      if (!this.pingTimer) this.schedulePing();
    } else if (this.state.status === "reconnecting") {
      this.retryNow();
    }
  }

  private onClosed(code: number | undefined, wasConnected: boolean): void {
    if (this.stopped) return;
    this.clearTimers();
    switch (code) {
      case CLOSE.FORBIDDEN:
        this.stopped = true;
        this.setState({ status: "disconnected", transport: this.current(), attempt: this.failures, reason: "forbidden" });
        return;
      case CLOSE.DRAINING:
        // Another gateway is ready: reconnect at once, jittered to spread the herd.
        this.retryIn(Math.floor(this.env.random() * 1000), false);
        return;
      case CLOSE.TOKEN_EXPIRED:
        this.tokenWhy = "expired";
        this.retryIn(0, false);
        return;
      default:
        if (!wasConnected) {
          this.failed(code);
          return;
        }
        this.retryIn(this.backoff.delay(this.failures), true);
    }
  }

  /** A transport failed before `connected`: back off, and fall back after a few. */
  private failed(_code: number | undefined): void {
    this.transportFailures += 1;
    if (this.transportFailures >= (this.options.fallbackAfter ?? 2) && this.transportIndex < this.transports.length - 1) {
      this.transportIndex += 1;
      this.transportFailures = 0;
    }
    this.retryIn(this.backoff.delay(this.failures), true);
  }

  private retryIn(ms: number, counts: boolean): void {
    if (counts) this.failures += 1;
    if (this.backoff.exhausted(this.failures)) {
      this.stopped = true;
      this.setState({ status: "disconnected", transport: this.current(), attempt: this.failures, reason: "gave up" });
      return;
    }
    this.setState({ status: "reconnecting", transport: this.current(), attempt: this.failures, nextRetryAt: this.env.now() + ms });
    this.later(() => void this.connect(), ms);
  }

  /** On a fallback: try WebSocket every so often and switch back when it connects. */
  private scheduleProbe(): void {
    if (this.transportIndex === 0 || !this.transports.includes("websocket")) return;
    this.later(() => {
      let probe: WebSocketLike;
      try {
        probe = new this.env.WebSocket(this.wsUrl());
      } catch {
        this.scheduleProbe();
        return;
      }
      this.probe = probe;
      probe.onmessage = (ev) => {
        const text = typeof ev.data === "string" ? ev.data : "";
        probe.onmessage = null;
        probe.onclose = null;
        this.probe = null;
        // Back on WebSocket: drop the fallback, adopt the probe.
        this.stream?.abort();
        this.stream = null;
        this.clearTimers();
        this.transportIndex = 0;
        this.ws = probe;
        let connected = this.onConnected(text, "websocket");
        probe.onmessage = (next) => {
          const t = typeof next.data === "string" ? next.data : "";
          if (!connected) connected = this.onConnected(t, "websocket");
          else this.onFrame(t);
        };
        probe.onclose = (e) => {
          if (this.ws !== probe) return;
          this.ws = null;
          this.onClosed(e.code, connected);
        };
      };
      probe.onclose = () => {
        this.probe = null;
        this.scheduleProbe();
      };
      probe.onerror = () => {};
    }, this.options.probeEveryMs ?? 30000);
  }

  private headers(): Record<string, string> {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /** SSE read from a fetch stream, so any event type (and a header token) works. */
  private async openSse(): Promise<void> {
    const controller = new AbortController();
    this.stream = controller;
    let connected = false;
    try {
      const response = await this.env.fetch(this.httpUrl("events/stream"), { headers: this.headers(), signal: controller.signal });
      if (!response.ok || !response.body) throw new Error(`SSE answered ${response.status}`);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const { event, data } = parseSseBlock(block);
          if (data === undefined) continue;
          if (event === "connected") connected = this.onConnected(data, "sse") || connected;
          else if (event === "close") {
            const code = (JSON.parse(data) as { code?: number }).code;
            if (this.stream === controller) {
              this.stream = null;
              this.onClosed(code, connected);
            }
            return;
          } else this.onFrame(data);
        }
      }
    } catch {
      if (controller.signal.aborted) return;
    }
    if (this.stream === controller) {
      this.stream = null;
      this.onClosed(undefined, connected);
    }
  }

  private async poll(first: boolean): Promise<void> {
    try {
      const response = await this.env.fetch(this.httpUrl("events"), { headers: this.headers() });
      if (response.status === 401) this.tokenWhy = "expired";
      if (!response.ok) throw new Error(`polling answered ${response.status}`);
      const page = (await response.json()) as { events: TidingsEvent[]; next: string; recovered: boolean };
      if (first) {
        this.onConnected(
          JSON.stringify({ type: "connected", connection_id: "", workspace_id: this.options.workspaceId, user_id: "", server: "", heartbeat_ms: 0, expires_at: "", recovered: page.recovered }),
          "polling",
        );
      } else if (!page.recovered) this.options.onReload?.();
      for (const e of page.events) this.deliver(e);
      if (page.next && page.next !== "0-0" && (this.lastId === undefined || compareIds(page.next, this.lastId) > 0)) this.lastId = page.next;
      if (!this.stopped && this.current() === "polling") this.later(() => void this.poll(false), this.options.pollEveryMs ?? 2000);
    } catch {
      if (this.stopped || this.current() !== "polling") return;
      this.clearTimers();
      if (first) this.failed(undefined);
      else this.retryIn(this.backoff.delay(this.failures), true);
    }
  }

  private rememberFilter(message: ClientMessage): void {
    const merge = (current: string[] | undefined, add: string[] | undefined) =>
      add === undefined || add.length === 0 ? current : current === undefined ? [...add] : [...new Set([...current, ...add])];
    const remove = (current: string[] | undefined, drop: string[] | undefined) =>
      current === undefined || drop === undefined ? current : current.filter((x) => !drop.includes(x));
    if (message.type === "subscribe") {
      this.eventTypes = merge(this.eventTypes, message.event_types);
      this.entityRefs = merge(this.entityRefs, message.entity_refs);
    } else if (message.type === "unsubscribe") {
      this.eventTypes = remove(this.eventTypes, message.event_types);
      this.entityRefs = remove(this.entityRefs, message.entity_refs);
    } else if (message.type === "update_filter") {
      if (message.event_types !== undefined) this.eventTypes = message.event_types === "*" ? undefined : [...message.event_types];
      if (message.entity_refs !== undefined) this.entityRefs = message.entity_refs === "*" ? undefined : [...message.entity_refs];
    }
  }
}

/** One SSE block's `event:` and joined `data:` lines; comments are skipped. */
export function parseSseBlock(block: string): { event: string; data: string | undefined } {
  let event = "message";
  const data: string[] = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return { event, data: data.length ? data.join("\n") : undefined };
}
