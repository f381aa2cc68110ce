// Generated from clients/js by `npm run build`; edit the TypeScript there, not this file.
// DOM building that can only make text: every value from an event reaches the
// page through `textContent` or a text node, never through HTML parsing, so an
// event cannot inject markup or script whatever it carries.
/** `<tag class=… title=… data-…>children</tag>`; strings become text nodes. */
export function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    if (props.class)
        node.className = props.class;
    if (props.title)
        node.title = props.title;
    for (const [k, v] of Object.entries(props.data ?? {}))
        node.dataset[k] = v;
    for (const c of children) {
        if (c === null || c === undefined || c === false)
            continue;
        node.append(typeof c === "number" ? String(c) : c);
    }
    return node;
}
/** A link only when `href` is http(s); anything else (`javascript:` …) is dropped. */
export function link(href, text) {
    const url = safeUrl(href);
    if (!url)
        return el("span", { class: "nolink" });
    const a = el("a", {}, text);
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
}
export function safeUrl(href) {
    if (typeof href !== "string")
        return undefined;
    try {
        const url = new URL(href);
        return url.protocol === "https:" || url.protocol === "http:" ? url.href : undefined;
    }
    catch {
        return undefined;
    }
}
/** Replaces the children of `parent`. */
export function replace(parent, ...children) {
    parent.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false).map((c) => (typeof c === "number" ? String(c) : c)));
}
/** A string field of untyped event data, or "". */
export function str(value) {
    return typeof value === "string" ? value : typeof value === "number" || typeof value === "boolean" ? String(value) : "";
}
export function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}
/** An object field of untyped event data, or an empty object. */
export function obj(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
}
export function list(value) {
    return Array.isArray(value) ? value : [];
}
/** Local wall-clock time of an RFC 3339 timestamp, or "" when it is not one. */
export function clock(timestamp) {
    const t = Date.parse(str(timestamp));
    return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString();
}
/** `kind:namespace/name` → `name`, for compact labels. */
export function shortRef(ref) {
    const slash = ref.lastIndexOf("/");
    return slash >= 0 ? ref.slice(slash + 1) : ref;
}
/** Runs `fn` once per animation frame however often it is asked for. */
export function coalesced(fn) {
    let queued = false;
    return () => {
        if (queued)
            return;
        queued = true;
        requestAnimationFrame(() => {
            queued = false;
            fn();
        });
    };
}
