// The log stream: `log_entry` and every entry of a `log_batch`, with pause
// (arrivals wait, counted), resume, clear and a minimum-level filter.

import type { TidingsEvent } from "../src/protocol.js";
import { clock, coalesced, el, list, obj, str } from "./dom.js";
import type { Panel } from "./panels.js";

const MAX_LINES = 2000;
const LEVELS = ["trace", "debug", "info", "warn", "error"];

/** `warning` → `warn`, `fatal`/`critical` → `error`; unknown levels count as `info`. */
export function levelRank(level: string): number {
  const l = level.toLowerCase();
  if (l === "warning") return LEVELS.indexOf("warn");
  if (l === "fatal" || l === "critical" || l === "err") return LEVELS.indexOf("error");
  const i = LEVELS.indexOf(l);
  return i < 0 ? LEVELS.indexOf("info") : i;
}

interface Line {
  level: string;
  task: string;
  message: string;
  timestamp: string;
}

export class LogsPanel implements Panel {
  private paused = false;
  private waiting: Line[] = [];
  private minLevel = 0;
  /** Lines shown since the last frame: one DOM insertion and one layout read per frame, however fast lines come. */
  private pending: Line[] = [];
  private readonly flush = coalesced(() => this.showPending());

  constructor(
    private readonly root: HTMLElement,
    private readonly controls: { pause: HTMLButtonElement; clear: HTMLButtonElement; level: HTMLSelectElement; waiting: HTMLElement },
  ) {
    controls.pause.addEventListener("click", () => (this.paused ? this.resume() : this.pause()));
    controls.clear.addEventListener("click", () => this.clear());
    controls.level.addEventListener("change", () => this.setMinLevel(controls.level.value));
    this.setMinLevel(controls.level.value);
  }

  apply(event: TidingsEvent): void {
    if (event.type === "log_entry") this.add(this.line(event.data));
    else if (event.type === "log_batch") for (const entry of list(obj(event.data).entries)) this.add(this.line(entry));
  }

  clear(): void {
    this.waiting = [];
    this.pending = [];
    this.root.replaceChildren();
    this.showWaiting();
  }

  pause(): void {
    this.paused = true;
    this.controls.pause.textContent = "Resume";
    this.controls.pause.setAttribute("aria-pressed", "true");
    this.showWaiting();
  }

  resume(): void {
    this.paused = false;
    this.controls.pause.textContent = "Pause";
    this.controls.pause.setAttribute("aria-pressed", "false");
    const lines = this.waiting;
    this.waiting = [];
    this.pending.push(...lines);
    this.showPending();
    this.showWaiting();
  }

  private setMinLevel(level: string): void {
    this.minLevel = LEVELS.includes(level) ? LEVELS.indexOf(level) : 0;
    this.root.dataset.minLevel = String(this.minLevel);
    for (const row of Array.from(this.root.children) as HTMLElement[]) row.hidden = Number(row.dataset.rank) < this.minLevel;
  }

  private line(data: unknown): Line {
    const d = obj(data);
    return { level: str(d.level) || "info", task: str(d.task_id), message: str(d.message), timestamp: str(d.timestamp) };
  }

  private add(line: Line): void {
    if (this.paused) {
      this.waiting.push(line);
      if (this.waiting.length > MAX_LINES) this.waiting.shift();
      this.showWaiting();
    } else {
      this.pending.push(line);
      if (this.pending.length > MAX_LINES) this.pending.shift();
      this.flush();
    }
  }

  private showPending(): void {
    const lines = this.pending;
    this.pending = [];
    if (lines.length === 0) return;
    const rows = document.createDocumentFragment();
    for (const line of lines) {
      const rank = levelRank(line.level);
      const row = el(
        "li",
        { class: `log level-${LEVELS[rank]}`, data: { rank: String(rank) } },
        el("span", { class: "time" }, clock(line.timestamp)),
        el("span", { class: `level level-${LEVELS[rank]}` }, line.level),
        el("span", { class: "task" }, line.task),
        el("span", { class: "message" }, line.message),
      );
      row.hidden = rank < this.minLevel;
      rows.append(row);
    }
    const atBottom = this.root.scrollTop + this.root.clientHeight >= this.root.scrollHeight - 4;
    this.root.append(rows);
    for (let extra = this.root.childElementCount - MAX_LINES; extra > 0; extra--) this.root.firstElementChild?.remove();
    if (atBottom) this.root.scrollTop = this.root.scrollHeight;
  }

  private showWaiting(): void {
    this.controls.waiting.textContent = this.paused ? `paused · ${this.waiting.length} new` : "";
  }
}
