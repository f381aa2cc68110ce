// DOM building that can only make text: every value from an event reaches the
// page through `textContent` or a text node, never through HTML parsing, so an
// event cannot inject markup or script whatever it carries.

export type Child = Node | string | number | null | undefined | false;

export interface Props {
  class?: string;
  title?: string;
  /** `data-*` attributes. */
  data?: Record<string, string>;
}

/** `<tag class=… title=… data-…>children</tag>`; strings become text nodes. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (props.class) node.className = props.class;
  if (props.title) node.title = props.title;
  for (const [k, v] of Object.entries(props.data ?? {})) node.dataset[k] = v;
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === "number" ? String(c) : c);
  }
  return node;
}

/** A link only when `href` is http(s); anything else (`javascript:` …) is dropped. */
export function link(href: unknown, text: string): HTMLElement {
  const url = safeUrl(href);
  if (!url) return el("span", { class: "nolink" });
  const a = el("a", {}, text);
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

export function safeUrl(href: unknown): string | undefined {
  if (typeof href !== "string") return undefined;
  try {
    const url = new URL(href);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : undefined;
  } catch {
    return undefined;
  }
}

/** Replaces the children of `parent`. */
export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren(...children.filter((c): c is Node | string | number => c !== null && c !== undefined && c !== false).map((c) => (typeof c === "number" ? String(c) : c)));
}

/** A string field of untyped event data, or "". */
export function str(value: unknown): string {
  return typeof value === "string" ? value : typeof value === "number" || typeof value === "boolean" ? String(value) : "";
}

export function num(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/** An object field of untyped event data, or an empty object. */
export function obj(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

export function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** Local wall-clock time of an RFC 3339 timestamp, or "" when it is not one. */
export function clock(timestamp: unknown): string {
  const t = Date.parse(str(timestamp));
  return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString();
}

/** `kind:namespace/name` → `name`, for compact labels. */
export function shortRef(ref: string): string {
  const slash = ref.lastIndexOf("/");
  return slash >= 0 ? ref.slice(slash + 1) : ref;
}

/** Runs `fn` once per animation frame however often it is asked for. */
export function coalesced(fn: () => void): () => void {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}
