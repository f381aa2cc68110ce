// Host metrics (`metrics_update` of `host:*` entities) as a chart that follows
// each update, and the latest figures of every other entity as a table.

import type { TidingsEvent } from "../src/protocol.js";
import { drawChart, type Point } from "./chart.js";
import { coalesced, el, list, num, obj, replace, shortRef, str } from "./dom.js";
import type { Panel } from "./panels.js";

const WINDOW_MS = 10 * 60 * 1000;
const MAX_POINTS = 600;

interface HostSeries {
  cpu: Point[];
  memory: Point[];
  latest: Record<string, unknown>;
}

export class MetricsPanel implements Panel {
  private readonly hosts = new Map<string, HostSeries>();
  private readonly services = new Map<string, Record<string, unknown>>();
  private selected = "";
  private readonly render = coalesced(() => this.draw());

  constructor(
    private readonly parts: { canvas: HTMLCanvasElement; picker: HTMLSelectElement; figures: HTMLElement; services: HTMLElement },
  ) {
    parts.picker.addEventListener("change", () => {
      this.selected = parts.picker.value;
      this.render();
    });
    // The time axis moves even when no update arrives.
    setInterval(this.render, 5000);
    window.addEventListener("resize", this.render);
    this.render();
  }

  apply(event: TidingsEvent): void {
    if (event.type !== "metrics_update" || !event.entity_ref) return;
    const metrics = obj(obj(event.data).metrics);
    const ref = event.entity_ref;
    if (ref.startsWith("host:")) {
      const t = Date.parse(str(event.timestamp));
      const at = Number.isNaN(t) ? Date.now() : t;
      let series = this.hosts.get(ref);
      if (!series) {
        series = { cpu: [], memory: [], latest: {} };
        this.hosts.set(ref, series);
      }
      const last = series.cpu[series.cpu.length - 1];
      // The same update may come from history and from /latest: keep time order.
      if (!last || at > last.t) {
        const cpu = num(metrics.cpu);
        const memory = num(metrics.memory);
        if (cpu !== undefined) series.cpu.push({ t: at, v: cpu });
        if (memory !== undefined) series.memory.push({ t: at, v: memory });
        if (series.cpu.length > MAX_POINTS) series.cpu.shift();
        if (series.memory.length > MAX_POINTS) series.memory.shift();
        series.latest = metrics;
      }
      if (!this.selected) this.selected = ref;
    } else {
      this.services.set(ref, metrics);
    }
    this.render();
  }

  clear(): void {
    this.hosts.clear();
    this.services.clear();
    this.selected = "";
    this.render();
  }

  private draw(): void {
    const refs = [...this.hosts.keys()].sort();
    const options = refs.map((r) => {
      const o = el("option", {}, shortRef(r));
      o.value = r;
      return o;
    });
    if (this.parts.picker.childElementCount !== refs.length) replace(this.parts.picker, ...options);
    this.parts.picker.value = this.selected;
    this.parts.picker.hidden = refs.length < 2;

    const host = this.hosts.get(this.selected);
    drawChart(
      this.parts.canvas,
      host
        ? [
            { label: "cpu", colorVar: "--cpu", points: host.cpu },
            { label: "memory", colorVar: "--memory", points: host.memory },
          ]
        : [],
      WINDOW_MS,
    );
    if (!host) {
      replace(this.parts.figures, el("p", { class: "empty" }, "Waiting for host metrics (metrics_update of host:… entities)."));
    } else {
      const m = host.latest;
      const figure = (label: string, value: string, cls = "") => el("div", { class: `figure ${cls}` }, el("span", { class: "label" }, label), el("span", { class: "value" }, value));
      const pct = (v: unknown) => (num(v) === undefined ? "–" : `${(num(v) as number).toFixed(1)} %`);
      const disks = list(m.storage).map((d) => obj(d));
      const nets = list(m.network).map((n) => obj(n));
      const kib = (v: unknown) => `${((num(v) ?? 0) / 1024).toFixed(1)}`;
      replace(
        this.parts.figures,
        figure("host", shortRef(this.selected)),
        figure("cpu", pct(m.cpu), "cpu"),
        figure("memory", pct(m.memory), "memory"),
        num(m.processes) !== undefined ? figure("processes", String(m.processes)) : null,
        ...disks.slice(0, 3).map((d) => figure(`disk ${str(d.mount)}`, pct(d.used_percent))),
        ...nets.slice(0, 2).map((n) => figure(str(n.interface) || "net", `↓${kib(n.rx_bytes_per_sec)} ↑${kib(n.tx_bytes_per_sec)} KiB/s`)),
      );
    }
    if (this.services.size === 0) {
      replace(this.parts.services);
      return;
    }
    const cell = (v: unknown, unit = "") => el("td", {}, num(v) === undefined ? "–" : `${Math.round((num(v) as number) * 10) / 10}${unit}`);
    replace(
      this.parts.services,
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, el("th", {}, "Service"), el("th", {}, "CPU"), el("th", {}, "Memory"), el("th", {}, "Requests"), el("th", {}, "Errors"), el("th", {}, "Response"))),
        el(
          "tbody",
          {},
          ...[...this.services.entries()]
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([ref, m]) => el("tr", { data: { ref } }, el("td", { title: ref }, shortRef(ref)), cell(m.cpu, " %"), cell(m.memory, " %"), cell(m.requests), cell(m.errors), cell(m.response_time, " ms"))),
        ),
      ),
    );
  }
}
