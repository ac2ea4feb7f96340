// anomon console: live updates of the server-rendered pages (no build step, no framework).
// Everything that comes from Kafka is written with textContent or setAttribute, never as HTML.
"use strict";

(() => {
  const body = document.body;
  const THRESHOLD = parseFloat(body.dataset.threshold || "0.5");
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const SVG = "http://www.w3.org/2000/svg";

  // --- formatting ---------------------------------------------------------------------------------

  function localTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  }

  function duration(seconds) {
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  }

  const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : noun.endsWith("x") ? "es" : "s"}`;
  const verdictText = (v) => (v ? v.replace("_", " ") : "");
  const modelText = (m) => (m ? `${m.name} · ${m.version}` : "no model yet");
  // The latest frame heard of: the latest score's, or a newer thumbnail's (a learning camera has only those).
  const lastFrameTs = (c) => [c.last_ts, c.thumbnail && c.thumbnail.ts].filter(Boolean).sort().pop() || "";

  function setTime(el, iso) {
    el.dateTime = iso || "";
    el.textContent = localTime(iso);
    el.title = iso || "";
  }

  function localizeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((t) => { if (t.dateTime) setTime(t, t.dateTime); });
  }

  const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

  function byData(root, attr, value) {
    for (const el of root.querySelectorAll(`[data-${attr}]`)) if (el.dataset[attr] === value) return el;
    return null;
  }

  function svg(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  // --- the cameras grid ---------------------------------------------------------------------------

  function sparkline(el, scores) {
    el.replaceChildren();
    const w = 120, h = 32, y = (s) => h - 1 - Math.min(1, Math.max(0, s)) * (h - 2);
    el.append(svg("line", { x1: 0, x2: w, y1: y(THRESHOLD), y2: y(THRESHOLD), class: "threshold" }));
    if (scores.length < 2) return;
    const step = w / (scores.length - 1);
    const points = scores.map((s, i) => `${(i * step).toFixed(1)},${y(s).toFixed(1)}`).join(" ");
    el.append(svg("polyline", { points, class: scores[scores.length - 1] >= THRESHOLD ? "series hot" : "series" }));
  }

  function renderTile(tile, c) {
    tile.className = `tile state-${c.state}`;
    tile.dataset.camera = c.camera_id;
    field(tile, "camera_id").textContent = c.camera_id;
    field(tile, "state").textContent = c.state;
    const scoreEl = field(tile, "score");
    scoreEl.textContent = c.last_score == null ? "–" : c.last_score.toFixed(2);
    scoreEl.classList.toggle("hot", c.last_score != null && c.last_score >= THRESHOLD);
    field(tile, "model").textContent = modelText(c.state === "learning" ? null : c.model);
    setTime(field(tile, "last_ts"), lastFrameTs(c));
    field(tile, "alerts_24h").textContent = `${plural(c.alerts_24h, "alert")} in 24 h`;
    field(tile, "link").href = `/alerts?camera=${encodeURIComponent(c.camera_id)}`;
    const open = field(tile, "open_alert");
    open.hidden = !c.open_alert_id;
    open.href = c.open_alert_id ? `/alerts/${encodeURIComponent(c.open_alert_id)}` : "/alerts";
    const img = field(tile, "thumbnail");
    if (c.thumbnail && img.getAttribute("src") !== c.thumbnail.url) img.src = c.thumbnail.url;
    sparkline(tile.querySelector("svg.sparkline"), c.recent.map((p) => p.score));
  }

  function onCamera(c) {
    const grid = document.getElementById("grid");
    let tile = byData(grid, "camera", c.camera_id);
    if (!tile) {
      tile = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
      const after = [...grid.children].find((t) => t.dataset.camera > c.camera_id);
      grid.insertBefore(tile, after || null);
      document.getElementById("no-cameras").hidden = true;
      document.getElementById("camera-count").textContent = String(grid.children.length);
    }
    renderTile(tile, c);
  }

  function initCameras() {
    for (const tile of document.querySelectorAll("#grid .tile")) {
      sparkline(tile.querySelector("svg.sparkline"), JSON.parse(tile.dataset.points || "[]"));
    }
    return { camera: onCamera };
  }

  // --- the alerts list ----------------------------------------------------------------------------

  function renderRow(row, a) {
    row.dataset.alert = a.alert_id;
    row.dataset.camera = a.camera_id;
    row.dataset.start = a.start_ts;
    row.href = `/alerts/${encodeURIComponent(a.alert_id)}`;
    row.classList.toggle("open", a.open);
    const img = field(row, "snapshot");
    if (a.snapshot_url) {
      const src = `${a.snapshot_url}?peak=${a.peak.frame_index}`;
      if (img.getAttribute("src") !== src) img.src = src;
    }
    field(row, "camera_id").textContent = a.camera_id;
    setTime(field(row, "start_ts"), a.start_ts);
    field(row, "duration").textContent = duration(a.duration_seconds);
    field(row, "peak").textContent = a.peak.score.toFixed(2);
    field(row, "frames").textContent = String(a.frames);
    field(row, "boxes").textContent = String(a.peak.regions.length);
    field(row, "model").textContent = modelText(a.model);
    const status = field(row, "status");
    status.textContent = a.open ? "open" : a.end_reason;
    status.classList.toggle("is-open", a.open);
    const verdict = field(row, "verdict");
    verdict.textContent = verdictText(a.verdict);
    verdict.dataset.verdict = a.verdict || "";
  }

  function onAlert(a) {
    const list = document.getElementById("alert-list");
    let row = byData(list, "alert", a.alert_id);
    if (!row) {
      const { camera, since, live } = list.dataset;
      if (live !== "yes" || (camera && camera !== a.camera_id) || (since && a.start_ts < since)) return;
      row = document.getElementById("alert-template").content.firstElementChild.cloneNode(true);
      const after = [...list.querySelectorAll(".alert-row")].find((r) => r.dataset.start < a.start_ts);
      list.insertBefore(row, after || null);
      document.getElementById("no-alerts").hidden = true;
      const count = document.getElementById("alert-count");
      count.textContent = String(list.querySelectorAll(".alert-row").length) + (count.textContent.endsWith("+") ? "+" : "");
    }
    renderRow(row, a);
  }

  function initAlerts() {
    const form = document.getElementById("filters");
    form.elements.tz.value = String(new Date().getTimezoneOffset());
    form.elements.camera.addEventListener("change", () => form.requestSubmit());
    form.elements.range.addEventListener("change", () => form.requestSubmit());
    return { alert: onAlert };
  }

  // --- the alert detail ---------------------------------------------------------------------------

  function curve(el, d) {
    el.replaceChildren();
    const W = 1100, H = 220, L = 34, R = 10, T = 8, B = 24;
    const points = d.scores.map((p) => [Date.parse(p.ts), p.score]);
    const start = Date.parse(d.start_ts);
    const end = d.end_ts ? Date.parse(d.end_ts) : (points.length ? points[points.length - 1][0] : start);
    const t0 = Math.min(start, points.length ? points[0][0] : start);
    const t1 = Math.max(end, points.length ? points[points.length - 1][0] : end, t0 + 1);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (s) => T + (1 - Math.min(1, Math.max(0, s))) * (H - T - B);
    el.append(svg("rect", { x: x(start), y: T, width: Math.max(1, x(end) - x(start)), height: H - T - B, class: "band" }));
    for (const s of [0, 0.5, 1]) {
      el.append(svg("line", { x1: L, x2: W - R, y1: y(s), y2: y(s), class: s === THRESHOLD ? "threshold" : "grid" }));
      const label = svg("text", { x: L - 6, y: y(s) + 4, class: "axis", "text-anchor": "end" });
      label.textContent = s.toFixed(1);
      el.append(label);
    }
    for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
      const label = svg("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": anchor });
      label.textContent = new Date(t).toLocaleTimeString(undefined, { hour12: false });
      el.append(label);
    }
    if (points.length > 1) {
      const line = points.map(([t, s]) => `${x(t).toFixed(1)},${y(s).toFixed(1)}`).join(" ");
      el.append(svg("polyline", { points: line, class: "series" }));
    }
    const peak = svg("circle", { cx: x(Date.parse(d.peak.ts)), cy: y(d.peak.score), r: 4, class: "peak" });
    el.append(peak);
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const [text, cls, iso] of cells) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (iso) {
        const t = document.createElement("time");
        setTime(t, iso);
        td.append(t);
      } else td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  function renderDetail(d) {
    const status = document.getElementById("status");
    status.textContent = d.open ? "open" : `ended: ${d.end_reason}`;
    status.classList.toggle("is-open", d.open);
    const ended = document.getElementById("ended");
    if (d.end_ts) {
      const t = document.createElement("time");
      setTime(t, d.end_ts);
      ended.replaceChildren(t);
    } else ended.textContent = "still open";
    document.getElementById("duration").textContent = duration(d.duration_seconds);
    document.getElementById("frames").textContent = String(d.frames);
    document.getElementById("peak").textContent = `${d.peak.score.toFixed(3)} at frame ${d.peak.frame_index}`;
    const boxes = document.getElementById("boxes");
    boxes.replaceChildren(...d.peak.regions.map((r) => {
      const span = document.createElement("span");
      span.className = "box";
      span.textContent = `[${r.bbox.join(", ")}] ${r.score.toFixed(2)}`;
      return span;
    }));
    if (!d.peak.regions.length) boxes.textContent = "none";
    document.getElementById("snapshot-caption").textContent =
      `peak frame ${d.peak.frame_index} · score ${d.peak.score.toFixed(2)} · ${plural(d.peak.regions.length, "box")}`;
    const img = document.getElementById("snapshot");
    if (img && d.snapshot_url) {
      const src = `${d.snapshot_url}?peak=${d.peak.frame_index}`;
      if (img.getAttribute("src") !== src) img.src = src;
    }
    const verdict = document.getElementById("verdict");
    verdict.textContent = d.verdict ? verdictText(d.verdict) : "none yet";
    verdict.dataset.verdict = d.verdict || "";
    document.querySelector("#events tbody").replaceChildren(...d.events.map((e) => row([
      [e.type], ["", "", e.ts], [String(e.frames), "num"], [e.peak_score.toFixed(2), "num"], [e.end_reason || ""],
    ])));
    document.querySelector("#feedback tbody").replaceChildren(...d.feedback.map((f) => row([
      [verdictText(f.verdict)], ["", "", f.ts], [f.note], [f.published ? "yes" : "pending"],
    ])));
    document.getElementById("no-feedback").hidden = d.feedback.length > 0;
    curve(document.getElementById("curve"), d);
  }

  function initDetail() {
    const detail = document.getElementById("detail");
    const id = detail.dataset.alert;
    const api = `/api/alerts/${encodeURIComponent(id)}`;
    const status = document.getElementById("feedback-status");
    let current = JSON.parse(detail.dataset.alertJson);
    let pending = null;
    curve(document.getElementById("curve"), current);

    async function refresh() {
      pending = null;
      const response = await fetch(api, { headers: { Accept: "application/json" } });
      if (response.ok) {
        current = await response.json();
        renderDetail(current);
      }
    }
    const soon = () => { if (!pending) pending = setTimeout(refresh, 500); };

    for (const button of detail.querySelectorAll("button[data-verdict]")) {
      button.addEventListener("click", async () => {
        status.textContent = "saving…";
        const response = await fetch(`${api}/feedback`, {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF, Accept: "application/json" },
          body: JSON.stringify({ verdict: button.dataset.verdict, note: document.getElementById("note").value }),
        });
        if (response.ok) {
          current = await response.json();
          renderDetail(current);
          const last = current.feedback[current.feedback.length - 1];
          status.textContent = last.published ? "saved and published to the feedback topic"
            : "saved; publishing to Kafka is retried";
        } else {
          const problem = await response.json().catch(() => ({ detail: response.statusText }));
          status.textContent = `not saved: ${typeof problem.detail === "string" ? problem.detail : response.status}`;
        }
      });
    }
    return {
      alert: (a) => { if (a.alert_id === id) soon(); },
      camera: (c) => { if (c.camera_id === current.camera_id && current.open) soon(); },
    };
  }

  // --- live updates -------------------------------------------------------------------------------

  function connect(handlers) {
    const pill = document.getElementById("live");
    if (!pill) return;
    const events = new EventSource("/events");
    events.addEventListener("open", () => { pill.dataset.state = "connected"; pill.textContent = "live"; });
    events.addEventListener("error", () => { pill.dataset.state = "reconnecting"; pill.textContent = "reconnecting"; });
    for (const [kind, handle] of Object.entries(handlers)) {
      events.addEventListener(kind, (e) => handle(JSON.parse(e.data)));
    }
  }

  localizeTimes(document);
  const init = { cameras: initCameras, alerts: initAlerts, alert: initDetail }[body.dataset.page];
  if (init) connect(init());
})();
