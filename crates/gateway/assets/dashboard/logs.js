// Generated from clients/js by `npm run build`; edit the TypeScript there, not this file.
// The log stream: `log_entry` and every entry of a `log_batch`, with pause
// (arrivals wait, counted), resume, clear and a minimum-level filter.
import { clock, coalesced, el, list, obj, str } from "./dom.js";
const MAX_LINES = 2000;
const LEVELS = ["trace", "debug", "info", "warn", "error"];
/** `warning` → `warn`, `fatal`/`critical` → `error`; unknown levels count as `info`. */
export function levelRank(level) {
    const l = level.toLowerCase();
    if (l === "warning")
        return LEVELS.indexOf("warn");
    if (l === "fatal" || l === "critical" || l === "err")
        return LEVELS.indexOf("error");
    const i = LEVELS.indexOf(l);
    return i < 0 ? LEVELS.indexOf("info") : i;
}
export class LogsPanel {
    constructor(root, controls) {
        this.root = root;
        this.controls = controls;
        this.paused = false;
        this.waiting = [];
        this.minLevel = 0;
        /** Lines shown since the last frame: one DOM insertion and one layout read per frame, however fast lines come. */
        this.pending = [];
        this.flush = coalesced(() => this.showPending());
        controls.pause.addEventListener("click", () => (this.paused ? this.resume() : this.pause()));
        controls.clear.addEventListener("click", () => this.clear());
        controls.level.addEventListener("change", () => this.setMinLevel(controls.level.value));
        this.setMinLevel(controls.level.value);
    }
    apply(event) {
        if (event.type === "log_entry")
            this.add(this.line(event.data));
        else if (event.type === "log_batch")
            for (const entry of list(obj(event.data).entries))
                this.add(this.line(entry));
    }
    clear() {
        this.waiting = [];
        this.pending = [];
        this.root.replaceChildren();
        this.showWaiting();
    }
    pause() {
        this.paused = true;
        this.controls.pause.textContent = "Resume";
        this.controls.pause.setAttribute("aria-pressed", "true");
        this.showWaiting();
    }
    resume() {
        this.paused = false;
        this.controls.pause.textContent = "Pause";
        this.controls.pause.setAttribute("aria-pressed", "false");
        const lines = this.waiting;
        this.waiting = [];
        this.pending.push(...lines);
        this.showPending();
        this.showWaiting();
    }
    setMinLevel(level) {
        this.minLevel = LEVELS.includes(level) ? LEVELS.indexOf(level) : 0;
        this.root.dataset.minLevel = String(this.minLevel);
        for (const row of Array.from(this.root.children))
            row.hidden = Number(row.dataset.rank) < this.minLevel;
    }
    line(data) {
        const d = obj(data);
        return { level: str(d.level) || "info", task: str(d.task_id), message: str(d.message), timestamp: str(d.timestamp) };
    }
    add(line) {
        if (this.paused) {
            this.waiting.push(line);
            if (this.waiting.length > MAX_LINES)
                this.waiting.shift();
            this.showWaiting();
        }
        else {
            this.pending.push(line);
            if (this.pending.length > MAX_LINES)
                this.pending.shift();
            this.flush();
        }
    }
    showPending() {
        const lines = this.pending;
        this.pending = [];
        if (lines.length === 0)
            return;
        const rows = document.createDocumentFragment();
        for (const line of lines) {
            const rank = levelRank(line.level);
            const row = el("li", { class: `log level-${LEVELS[rank]}`, data: { rank: String(rank) } }, el("span", { class: "time" }, clock(line.timestamp)), el("span", { class: `level level-${LEVELS[rank]}` }, line.level), el("span", { class: "task" }, line.task), el("span", { class: "message" }, line.message));
            row.hidden = rank < this.minLevel;
            rows.append(row);
        }
        const atBottom = this.root.scrollTop + this.root.clientHeight >= this.root.scrollHeight - 4;
        this.root.append(rows);
        for (let extra = this.root.childElementCount - MAX_LINES; extra > 0; extra--)
            this.root.firstElementChild?.remove();
        if (atBottom)
            this.root.scrollTop = this.root.scrollHeight;
    }
    showWaiting() {
        this.controls.waiting.textContent = this.paused ? `paused · ${this.waiting.length} new` : "";
    }
}
