// A line chart of percentages over time on a <canvas>: no library, no text
// from events (labels are drawn by the page around it). Colours come from the
// page's CSS variables so it follows the light/dark theme.

export interface Point {
  /** ms since the epoch */
  t: number;
  v: number;
}

export interface Series {
  label: string;
  colorVar: string;
  points: Point[];
}

export function drawChart(canvas: HTMLCanvasElement, series: Series[], windowMs: number, now = Date.now()): void {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (width === 0 || height === 0) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const style = getComputedStyle(canvas);
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const pad = { left: 30, right: 6, top: 6, bottom: 16 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const x = (t: number) => pad.left + ((t - (now - windowMs)) / windowMs) * w;
  const y = (v: number) => pad.top + h - (Math.max(0, Math.min(100, v)) / 100) * h;

  ctx.strokeStyle = style.getPropertyValue("--grid").trim() || "#8884";
  ctx.fillStyle = style.getPropertyValue("--muted").trim() || "#888";
  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const v of [0, 25, 50, 75, 100]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, y(v));
    ctx.lineTo(pad.left + w, y(v));
    ctx.stroke();
    ctx.fillText(`${v}%`, 2, y(v) + 3);
  }
  ctx.fillText(`${Math.round(windowMs / 60000)} min`, pad.left, height - 3);
  ctx.fillText("now", pad.left + w - 18, height - 3);

  for (const s of series) {
    const points = s.points.filter((p) => p.t >= now - windowMs);
    if (points.length === 0) continue;
    ctx.strokeStyle = style.getPropertyValue(s.colorVar).trim() || "#38bdf8";
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i === 0 ? ctx.moveTo(x(p.t), y(p.v)) : ctx.lineTo(x(p.t), y(p.v))));
    ctx.stroke();
    const last = points[points.length - 1];
    ctx.beginPath();
    ctx.arc(x(last.t), y(last.v), 3, 0, Math.PI * 2);
    ctx.fill();
  }
}
