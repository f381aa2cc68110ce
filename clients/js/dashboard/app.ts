// The live dashboard: reads the token from the URL fragment (`#token=…`,
// optionally `&workspace=…`), loads the workspace's recent history and the
// latest metrics and health per entity, then stays live through
// `TidingsClient`, resuming exactly after the last event it loaded.

import { TidingsClient, type ConnectionState } from "../src/client.js";
import { compareIds, type TidingsEvent } from "../src/protocol.js";
import { el, obj, str } from "./dom.js";
import { LogsPanel } from "./logs.js";
import { MetricsPanel } from "./metrics.js";
import { AlertsPanel, CatalogPanel, DeploymentsPanel, EventsPanel, HealthPanel, HealthStore, NotificationToasts, type Panel } from "./panels.js";

const HISTORY_LIMIT = 1000;
const TOAST_MS = 6000;
const MAX_TOASTS = 5;

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node as T;
}

/** The gateway this page came from, with any path prefix a proxy adds. */
function baseUrl(): string {
  return new URL(".", location.href).href.replace(/\/$/, "");
}

function fragment(): URLSearchParams {
  return new URLSearchParams(location.hash.slice(1));
}

/** The workspace a token names (`workspace_id`, else its only listed one); not verified here, the gateway does that. */
export function workspaceOf(token: string): string | undefined {
  try {
    const part = token.split(".")[1] ?? "";
    const claims = obj(JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="))));
    if (str(claims.workspace_id)) return str(claims.workspace_id);
    const listed = Array.isArray(claims.workspaces) ? claims.workspaces.filter((w): w is string => typeof w === "string" && w !== "*") : [];
    return listed.length === 1 ? listed[0] : undefined;
  } catch {
    return undefined;
  }
}

/** "auto" follows the system's preference, also when it changes; the toggle's choice is remembered. */
function setupTheme(): void {
  const button = byId<HTMLButtonElement>("theme");
  const themes = ["auto", "light", "dark"];
  const system = matchMedia("(prefers-color-scheme: dark)");
  let current = localStorage.getItem("tidings-theme") ?? "auto";
  if (!themes.includes(current)) current = "auto";
  const apply = () => {
    document.documentElement.dataset.theme = current === "auto" ? (system.matches ? "dark" : "light") : current;
    button.textContent = `theme: ${current}`;
  };
  apply();
  system.addEventListener("change", apply);
  button.addEventListener("click", () => {
    current = themes[(themes.indexOf(current) + 1) % themes.length];
    localStorage.setItem("tidings-theme", current);
    apply();
  });
}

function toaster(root: HTMLElement) {
  return (kind: string, title: string, detail: string) => {
    const toast = el("div", { class: `toast toast-${kind}`, data: { kind } }, el("strong", {}, title), el("span", {}, detail));
    toast.setAttribute("role", "status");
    root.append(toast);
    while (root.childElementCount > MAX_TOASTS) root.firstElementChild?.remove();
    setTimeout(() => toast.remove(), TOAST_MS);
  };
}

/** Shows the connection state; counts down to the next retry. */
class StatusIndicator {
  private state: ConnectionState | undefined;
  private note = "";

  constructor(
    private readonly parts: { status: HTMLElement; text: HTMLElement; retry: HTMLButtonElement; transport: HTMLElement; server: HTMLElement },
    retry: () => void,
  ) {
    parts.retry.addEventListener("click", retry);
    setInterval(() => this.draw(), 250);
  }

  show(state: ConnectionState): void {
    this.state = state;
    this.draw();
  }

  /** A message shown while no client state applies (loading, no token). */
  say(status: string, note: string): void {
    this.state = undefined;
    this.note = note;
    this.parts.status.dataset.status = status;
    document.body.dataset.status = status;
    this.parts.text.textContent = note;
    this.parts.retry.hidden = true;
  }

  server(name: string): void {
    this.parts.server.textContent = name ? `server ${name}` : "";
  }

  private draw(): void {
    const s = this.state;
    if (!s) return;
    this.parts.status.dataset.status = s.status;
    document.body.dataset.status = s.status;
    document.body.dataset.transport = s.transport;
    let text: string = s.status;
    if (s.status === "connecting") text = "connecting…";
    if (s.status === "reconnecting") {
      const left = s.nextRetryAt === undefined ? 0 : Math.max(0, Math.ceil((s.nextRetryAt - Date.now()) / 1000));
      text = left > 0 ? `reconnecting in ${left} s (attempt ${s.attempt})` : `reconnecting… (attempt ${s.attempt})`;
    }
    if (s.status === "disconnected") text = `disconnected: ${s.reason ?? "stopped"}`;
    this.parts.text.textContent = this.note && s.status === "connected" ? `${text} · ${this.note}` : text;
    this.parts.retry.hidden = s.status !== "reconnecting";
    this.parts.transport.hidden = s.transport === "websocket";
    this.parts.transport.textContent = s.transport === "sse" ? "fallback: Server-Sent Events" : s.transport === "polling" ? "fallback: polling" : "";
  }

  clearNote(): void {
    this.note = "";
  }

  noteOnce(note: string): void {
    this.note = note;
    this.draw();
  }
}

function askForToken(reason: string): void {
  const form = byId<HTMLFormElement>("token-form");
  byId("token-reason").textContent = reason;
  form.hidden = false;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = byId<HTMLInputElement>("token-input").value.trim();
    if (token) {
      location.hash = new URLSearchParams({ token }).toString();
      location.reload();
    }
  });
}

async function fetchJson(url: string, token: string): Promise<unknown> {
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    const body = obj(obj(await response.json().catch(() => ({}))).error);
    throw new Error(`${response.status} ${str(body.message) || response.statusText}`);
  }
  return response.json();
}

function main(): void {
  setupTheme();
  const toast = toaster(byId("toasts"));
  const health = new HealthStore();
  const events = new EventsPanel(byId("events"), byId("event-count"));
  const panels: Panel[] = [
    health,
    new CatalogPanel(byId("catalog"), health),
    new HealthPanel(byId("health"), health),
    new DeploymentsPanel(byId("deployments"), toast),
    new AlertsPanel(byId("alerts"), byId("alert-counts"), toast),
    new MetricsPanel({ canvas: byId("metrics-chart"), picker: byId("metrics-host"), figures: byId("metrics-figures"), services: byId("service-metrics") }),
    new LogsPanel(byId("logs"), { pause: byId("logs-pause"), clear: byId("logs-clear"), level: byId("logs-level"), waiting: byId("logs-waiting") }),
    new NotificationToasts(toast),
    events,
  ];
  const apply = (event: TidingsEvent, live: boolean) => {
    for (const panel of panels) panel.apply(event, live);
  };

  let client: TidingsClient | undefined;
  const status = new StatusIndicator(
    { status: byId("status"), text: byId("status-text"), retry: byId("retry"), transport: byId("transport"), server: byId("server") },
    () => client?.retryNow(),
  );

  const params = fragment();
  const token = params.get("token") ?? "";
  const workspace = params.get("workspace") ?? (token ? workspaceOf(token) : undefined);
  if (!token) {
    status.say("disconnected", "no token");
    askForToken("Open the Dashboard link that `tidings dev` printed, or paste a token for a workspace.");
    return;
  }
  if (!workspace) {
    status.say("disconnected", "no workspace");
    askForToken("The token names no single workspace: add &workspace=ID to the URL, or paste another token.");
    return;
  }
  byId("workspace").textContent = workspace;
  document.title = `Tidings · ${workspace}`;
  const base = baseUrl();
  const api = `${base}/v1/workspaces/${encodeURIComponent(workspace)}`;

  /** History, then latest state, then live from right after that history; retried until the gateway answers. */
  const open = async (attempt = 0): Promise<void> => {
    client?.stop();
    client = undefined;
    for (const panel of panels) panel.clear();
    status.say("connecting", attempt ? `loading history (attempt ${attempt + 1})…` : "loading history…");
    let since: string | undefined;
    try {
      const page = obj(await fetchJson(`${api}/events?limit=${HISTORY_LIMIT}`, token));
      const history = Array.isArray(page.events) ? (page.events as TidingsEvent[]) : [];
      for (const event of history) apply(event, false);
      since = str(page.next) || undefined;
      const latest = obj(obj(await fetchJson(`${api}/latest`, token)).entities);
      for (const byType of Object.values(latest)) {
        for (const event of Object.values(obj(byType))) {
          const e = event as TidingsEvent;
          // History already holds durable ones; /latest adds live-only metrics and health.
          if (e.id === undefined || since === undefined || compareIds(e.id, since) > 0) apply(e, false);
        }
      }
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (message.startsWith("401") || message.startsWith("403")) {
        status.say("disconnected", `refused: ${message}`);
        askForToken(`The gateway refused the token (${message}).`);
        return;
      }
      const wait = Math.min(30000, 1000 * 2 ** attempt) * (0.5 + Math.random() / 2);
      status.say("reconnecting", `cannot load history (${message}); retrying in ${Math.ceil(wait / 1000)} s`);
      setTimeout(() => void open(attempt + 1), wait);
      return;
    }
    client = new TidingsClient({
      url: base,
      workspaceId: workspace,
      token: (why) => (why === "initial" ? token : null),
      since,
      onEvent: (event) => apply(event, true),
      onState: (state) => {
        if (state.status === "disconnected" && state.reason === "no token") askForToken("The token expired: paste a new one.");
        status.show(state);
      },
      onMessage: (message) => {
        if (message.type === "connected") status.server(message.server);
        if (message.type === "lagged") status.noteOnce(`${message.dropped} events dropped while this page fell behind`);
      },
      onReload: () => {
        toast("reload", "History was lost", "Reloading the dashboard's state from the gateway.");
        void open();
      },
    });
    status.clearNote();
    client.start();
  };
  void open();
}

main();
