// The dashboard's panels: each keeps its own state from the events it cares
// about and renders it as text. `apply` takes events oldest first; `live` is
// false for history loaded on open, so only live changes raise toasts.

import type { TidingsEvent } from "../src/protocol.js";
import { clock, coalesced, el, link, obj, replace, shortRef, str } from "./dom.js";

export interface Panel {
  apply(event: TidingsEvent, live: boolean): void;
  clear(): void;
}

const MAX_FEED = 100;
const MAX_ALERTS = 200;
const MAX_EVENTS = 200;

/** Newest `health_update` per entity; shared by the catalog and the health panel. */
export class HealthStore implements Panel {
  readonly byRef = new Map<string, { level: string; message: string; timestamp: string }>();
  private readonly listeners: (() => void)[] = [];

  onChange(fn: () => void): void {
    this.listeners.push(fn);
  }

  apply(event: TidingsEvent): void {
    if (event.type !== "health_update" || !event.entity_ref) return;
    const health = obj(obj(event.data).health);
    this.byRef.set(event.entity_ref, { level: str(health.level) || "info", message: str(health.message), timestamp: str(health.timestamp) || str(event.timestamp) });
    this.listeners.forEach((fn) => fn());
  }

  clear(): void {
    this.byRef.clear();
    this.listeners.forEach((fn) => fn());
  }
}

export function healthBadge(level: string | undefined): HTMLElement {
  const label = level === "error" ? "down" : level === "warning" ? "degraded" : level ? "healthy" : "unknown";
  return el("span", { class: `badge health-${level ?? "unknown"}`, title: level ?? "no health reported" }, label);
}

interface Entity {
  ref: string;
  kind: string;
  name: string;
  type: string;
  owner: string;
  lifecycle: string;
  description: string;
  updated: string;
}

/** The live service catalog from `entity_update`. */
export class CatalogPanel implements Panel {
  private readonly entities = new Map<string, Entity>();
  private readonly render = coalesced(() => this.draw());

  constructor(
    private readonly root: HTMLElement,
    private readonly health: HealthStore,
  ) {
    health.onChange(this.render);
    this.render();
  }

  apply(event: TidingsEvent): void {
    if (event.type !== "entity_update") return;
    const data = obj(event.data);
    const kind = str(data.kind);
    const name = str(data.name);
    const ref = event.entity_ref ?? `${kind}:${str(data.namespace) || "default"}/${name}`.toLowerCase();
    if (str(data.change_type) === "deleted") {
      this.entities.delete(ref);
    } else {
      const entity = obj(data.entity);
      const spec = obj(entity.spec);
      const metadata = obj(entity.metadata);
      this.entities.set(ref, {
        ref,
        kind,
        name: str(metadata.title) || name,
        type: str(spec.type),
        owner: str(spec.owner),
        lifecycle: str(spec.lifecycle),
        description: str(metadata.description),
        updated: str(event.timestamp),
      });
    }
    this.render();
  }

  clear(): void {
    this.entities.clear();
    this.render();
  }

  private draw(): void {
    const rows = [...this.entities.values()].sort((a, b) => a.ref.localeCompare(b.ref));
    if (rows.length === 0) {
      replace(this.root, el("p", { class: "empty" }, "No catalog entities yet. Backstage entity_update events appear here."));
      return;
    }
    const table = el(
      "table",
      {},
      el("thead", {}, el("tr", {}, el("th", {}, "Entity"), el("th", {}, "Type"), el("th", {}, "Owner"), el("th", {}, "Lifecycle"), el("th", {}, "Health"), el("th", {}, "Updated"))),
      el(
        "tbody",
        {},
        ...rows.map((e) =>
          el(
            "tr",
            { data: { ref: e.ref } },
            el("td", { title: e.description || e.ref }, el("strong", {}, e.name), el("span", { class: "ref" }, e.ref)),
            el("td", {}, [e.kind, e.type].filter(Boolean).join(" · ")),
            el("td", {}, e.owner),
            el("td", {}, e.lifecycle ? el("span", { class: "tag" }, e.lifecycle) : ""),
            el("td", {}, healthBadge(this.health.byRef.get(e.ref)?.level)),
            el("td", { class: "time" }, clock(e.updated)),
          ),
        ),
      ),
    );
    replace(this.root, table);
  }
}

/** Health badges of every entity that reported one. */
export class HealthPanel implements Panel {
  private readonly render = coalesced(() => this.draw());

  constructor(
    private readonly root: HTMLElement,
    private readonly health: HealthStore,
  ) {
    health.onChange(this.render);
    this.render();
  }

  apply(): void {}
  clear(): void {}

  private draw(): void {
    const rank = (level: string) => (level === "error" ? 0 : level === "warning" ? 1 : 2);
    const rows = [...this.health.byRef.entries()].sort(([ra, a], [rb, b]) => rank(a.level) - rank(b.level) || ra.localeCompare(rb));
    if (rows.length === 0) {
      replace(this.root, el("p", { class: "empty" }, "No health reported yet."));
      return;
    }
    replace(
      this.root,
      el(
        "ul",
        { class: "health-list" },
        ...rows.map(([ref, h]) =>
          el("li", { data: { ref } }, healthBadge(h.level), el("span", { class: "name", title: ref }, shortRef(ref)), el("span", { class: "message" }, h.message), el("span", { class: "time" }, clock(h.timestamp))),
        ),
      ),
    );
  }
}

export type Toast = (kind: string, title: string, detail: string) => void;

interface FeedItem {
  key: string;
  kind: "deployment" | "pipeline";
  status: string;
  title: string;
  detail: string;
  url: unknown;
  at: string;
  element?: HTMLElement;
}

/** Deployments (`deployment_update`) and pipelines (`pipeline_update`), newest first, one row per run. */
export class DeploymentsPanel implements Panel {
  private readonly items = new Map<string, FeedItem>();
  private readonly render = coalesced(() => this.draw());

  constructor(
    private readonly root: HTMLElement,
    private readonly toast: Toast,
  ) {
    this.render();
  }

  apply(event: TidingsEvent, live: boolean): void {
    let item: FeedItem;
    if (event.type === "deployment_update") {
      const d = obj(obj(event.data).deployment);
      const service = event.entity_ref ? shortRef(event.entity_ref) : "deployment";
      item = {
        key: `d:${event.entity_ref ?? ""}:${str(d.id)}`,
        kind: "deployment",
        status: str(d.status) || "unknown",
        title: `${service} ${str(d.version)}`.trim(),
        detail: [str(d.environment), str(d.commit).slice(0, 8)].filter(Boolean).join(" · "),
        url: d.url,
        at: str(d.end_time) || str(d.start_time) || str(event.timestamp),
      };
    } else if (event.type === "pipeline_update") {
      const p = obj(obj(event.data).pipeline);
      item = {
        key: `p:${str(p.provider)}:${str(p.id)}`,
        kind: "pipeline",
        status: str(p.status) || "unknown",
        title: str(p.name) || "pipeline",
        detail: [str(p.provider), str(p.ref), str(p.commit).slice(0, 8)].filter(Boolean).join(" · "),
        url: p.url,
        at: str(p.finished_at) || str(p.started_at) || str(event.timestamp),
      };
    } else return;
    this.items.delete(item.key); // re-inserted at the end = newest
    this.items.set(item.key, item);
    while (this.items.size > MAX_FEED) this.items.delete(this.items.keys().next().value as string);
    if (live) this.toast(item.kind, `${item.kind === "deployment" ? "Deployment" : "Pipeline"} ${item.status.replace(/_/g, " ")}`, item.title);
    this.render();
  }

  clear(): void {
    this.items.clear();
    this.render();
  }

  private draw(): void {
    if (this.items.size === 0) {
      replace(this.root, el("p", { class: "empty" }, "No deployments or pipelines yet."));
      return;
    }
    const received = Date.now();
    const rows = [...this.items.values()].reverse().map((i) => {
      // Keep the first-seen time on the row for the end-to-end latency check.
      const first = i.element?.dataset.receivedAt ?? String(received);
      const row = el(
        "li",
        { class: `feed-${i.kind}`, data: { key: i.key, status: i.status, receivedAt: first } },
        el("span", { class: `status status-${i.status}` }, i.status.replace(/_/g, " ")),
        el("span", { class: "kind" }, i.kind),
        el("span", { class: "title" }, i.title),
        el("span", { class: "detail" }, i.detail),
        link(i.url, "open"),
        el("span", { class: "time" }, clock(i.at)),
      );
      i.element = row;
      return row;
    });
    replace(this.root, el("ul", { class: "feed" }, ...rows));
  }
}

const PRIORITIES = ["critical", "high", "medium", "low"];

/** Alerts, most urgent first, then newest first. */
export class AlertsPanel implements Panel {
  private alerts: { priority: string; type: string; message: string; ref: string; at: string; seq: number }[] = [];
  private seq = 0;
  private readonly render = coalesced(() => this.draw());

  constructor(
    private readonly root: HTMLElement,
    private readonly counts: HTMLElement,
    private readonly toast: Toast,
  ) {
    this.render();
  }

  apply(event: TidingsEvent, live: boolean): void {
    if (event.type !== "alert") return;
    const a = obj(event.data);
    const priority = PRIORITIES.includes(str(a.priority)) ? str(a.priority) : "low";
    this.alerts.push({ priority, type: str(a.type), message: str(a.message), ref: event.entity_ref ?? "", at: str(event.timestamp), seq: this.seq++ });
    if (this.alerts.length > MAX_ALERTS) this.alerts.shift();
    if (live && (priority === "critical" || priority === "high")) this.toast(`alert-${priority}`, `${priority} alert`, str(a.message));
    this.render();
  }

  clear(): void {
    this.alerts = [];
    this.render();
  }

  private draw(): void {
    replace(
      this.counts,
      ...PRIORITIES.map((p) => {
        const n = this.alerts.filter((a) => a.priority === p).length;
        return n ? el("span", { class: `badge priority-${p}` }, `${n} ${p}`) : null;
      }),
    );
    if (this.alerts.length === 0) {
      replace(this.root, el("p", { class: "empty" }, "No alerts."));
      return;
    }
    const sorted = [...this.alerts].sort((a, b) => PRIORITIES.indexOf(a.priority) - PRIORITIES.indexOf(b.priority) || b.seq - a.seq);
    replace(
      this.root,
      el(
        "ul",
        { class: "alerts" },
        ...sorted.map((a) =>
          el(
            "li",
            { class: `priority-${a.priority}`, data: { priority: a.priority } },
            el("span", { class: `badge priority-${a.priority}` }, a.priority),
            el("span", { class: "message" }, a.message),
            el("span", { class: "detail" }, [a.type, a.ref ? shortRef(a.ref) : ""].filter(Boolean).join(" · ")),
            el("span", { class: "time" }, clock(a.at)),
          ),
        ),
      ),
    );
  }
}

/** Every event, newest first: what arrived, including types the page has no panel for. */
export class EventsPanel implements Panel {
  private count = 0;
  /** Rows since the last frame, oldest first; inserted together. */
  private pending: TidingsEvent[] = [];
  private readonly flush = coalesced(() => this.draw());

  constructor(
    private readonly root: HTMLElement,
    private readonly counter: HTMLElement,
  ) {}

  apply(event: TidingsEvent): void {
    this.count += 1;
    this.pending.push(event);
    if (this.pending.length > MAX_EVENTS) this.pending.shift();
    this.flush();
  }

  clear(): void {
    this.count = 0;
    this.pending = [];
    this.counter.textContent = "0";
    this.root.replaceChildren();
  }

  private draw(): void {
    this.counter.textContent = String(this.count);
    const rows = document.createDocumentFragment();
    for (const event of this.pending.reverse()) {
      const data = JSON.stringify(event.data) ?? "";
      rows.append(
        el(
          "li",
          { data: { type: event.type, id: event.id ?? "" } },
          el("span", { class: "type" }, event.type),
          el("span", { class: "ref" }, event.entity_ref ?? ""),
          el("span", { class: "time" }, clock(event.timestamp)),
          el("code", {}, data.length > 300 ? `${data.slice(0, 300)}…` : data),
        ),
      );
    }
    this.pending = [];
    this.root.prepend(rows);
    for (let extra = this.root.childElementCount - MAX_EVENTS; extra > 0; extra--) this.root.lastElementChild?.remove();
  }
}

/** Notifications only toast; they have no panel of their own beyond the event list. */
export class NotificationToasts implements Panel {
  constructor(private readonly toast: Toast) {}
  apply(event: TidingsEvent, live: boolean): void {
    if (event.type !== "notification" || !live) return;
    const n = obj(event.data);
    this.toast(`notification-${str(n.level) || "info"}`, str(n.title) || "Notification", str(n.message));
  }
  clear(): void {}
}
