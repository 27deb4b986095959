// metaedge operator page: the unknown-rate and latency charts, from /v1/stats polled every 2 s (the counters and
// the predict latency histogram of every worker). Loaded before app.js, whose state (page), $ and api() these
// functions use when they run. Plain JavaScript, no external code.
"use strict";
function quantile(now, then, q) {
  // Like Prometheus' histogram_quantile: the bucket that holds quantile q, interpolated linearly inside it.
  const rows = Object.entries(now).map(([le, v]) => [le === "+Inf" ? Infinity : Number(le), v - (then[le] || 0)]);
  rows.sort((a, b) => a[0] - b[0]);
  const total = rows.length ? rows[rows.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [le, count] of rows) {
    if (count >= rank) {
      if (!isFinite(le)) return lower;
      return lower + (le - lower) * (count > below ? (rank - below) / (count - below) : 1);
    }
    lower = le;
    below = count;
  }
  return null;
}

async function pollStats() {
  const s = await api("GET", "/v1/stats");
  const last = page.lastStats;
  page.lastStats = s;
  if (!last) return;
  const predictions = s.predictions - last.predictions;
  const count = s.latency_count - last.latency_count;
  const p90 = quantile(s.latency_buckets, last.latency_buckets, 0.9);
  page.stats.push({
    t: s.time,
    unknown: predictions > 0 ? (s.unknown - last.unknown) / predictions : null,
    mean: count > 0 ? 1000 * (s.latency_sum - last.latency_sum) / count : null,
    p90: p90 !== null && isFinite(p90) ? 1000 * p90 : null,
  });
  const horizon = s.time - 300;
  page.stats = page.stats.filter((p) => p.t >= horizon);
  drawCharts();
}

function drawChart(canvas, series, options) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 44, right = 8, top = 8, bottom = 18;
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v !== null));
  const now = page.stats.length ? page.stats[page.stats.length - 1].t : Date.now() / 1000;
  let max = options.max || Math.max(1, ...values) * 1.2;
  if (options.max === undefined && values.length) max = niceCeil(Math.max(...values) * 1.15);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#e2e6ec";
  g.fillStyle = "#6b7685";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (height - top - bottom) * (1 - i / 4);
    g.beginPath(); g.moveTo(left, y); g.lineTo(width - right, y); g.stroke();
    g.fillText(options.format(max * i / 4), 4, y + 4);
  }
  g.fillText("-5 min", left, height - 4);
  g.fillText("now", width - right - 22, height - 4);
  if (!values.length) {
    g.fillText(options.empty, left + 12, top + (height - top - bottom) / 2);
    return;
  }
  const x = (t) => left + (width - left - right) * (1 - (now - t) / 300);
  const y = (v) => top + (height - top - bottom) * (1 - Math.min(v, max) / max);
  series.forEach((s, index) => {
    g.strokeStyle = s.colour;
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    for (const [t, v] of s.points) {
      if (v === null) { drawing = false; continue; }
      if (drawing) g.lineTo(x(t), y(v)); else g.moveTo(x(t), y(v));
      drawing = true;
    }
    g.stroke();
    g.fillStyle = s.colour;
    g.fillText(s.name, width - right - 80 + index * 40, top + 10);
  });
}

function niceCeil(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawCharts() {
  const points = (key) => page.stats.map((p) => [p.t, p[key]]);
  drawChart($("chart-unknown"), [{ name: "unknown", colour: "#d64545", points: points("unknown") }],
            { max: 1, format: (v) => `${Math.round(v * 100)}%`, empty: "no predictions in the last 5 min" });
  drawChart($("chart-latency"), [{ name: "mean", colour: "#2f6fde", points: points("mean") },
                                 { name: "p90", colour: "#c98a00", points: points("p90") }],
            { format: (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)}`, empty: "no predictions in the last 5 min" });
}
