// Undertow dashboard: fetch /api/<page> every few seconds and draw it with plotly.js.
// Every text from the warehouse or the registry goes into the page as a text node
// (el() below), never as HTML: prompts and completions are user-controlled.
"use strict";

(function () {
  const body = document.body;
  const PAGE = body.dataset.page;
  const REFRESH_MS = Number(body.dataset.refreshMs) || 5000;
  const PLOT_CONFIG = { displaylogo: false, displayModeBar: false, responsive: true };
  const COLORS = {
    prompt: "#1f77b4", retrieval: "#9467bd", completion: "#2ca02c", feedback: "#ff7f0e",
    toxicity: "#d62728", injection: "#8c564b",
  };

  // -- DOM helpers ------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "href") node.setAttribute("href", safeHref(value));
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function safeHref(value) {
    const s = String(value);
    return /^(https?:\/\/|\/(?!\/))/i.test(s) ? s : "#";  // http(s) or same-origin paths
  }
  function $(id) { return document.getElementById(id); }
  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (digits === undefined) return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(2);
    return value.toFixed(digits);
  }
  function usd(value) { return value === null || value === undefined ? "–" : "$" + value.toFixed(value < 1 ? 5 : 2); }
  function fillBody(table, rows) {
    const tbody = table.tBodies[0];
    tbody.replaceChildren(...rows);
  }
  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", Boolean(isError));
  }
  function card(label, value) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  }

  // -- query string <-> filters -----------------------------------------------------------
  const params = new URLSearchParams(location.search);
  function bindFilter(id, name) {
    const input = $(id);
    if (!input) return;
    if (params.has(name)) input.value = params.get(name);
    input.addEventListener("change", () => {
      if (input.value && input.value !== "0") params.set(name, input.value); else params.delete(name);
      history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
      refresh();
    });
  }
  function filters(names) {
    const q = new URLSearchParams();
    for (const [id, name] of names) {
      const input = $(id);
      if (input && input.value) q.set(name, input.value);
    }
    return q;
  }
  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || data.detail || `${response.status} ${response.statusText}`);
    return data;
  }
  async function loadFacets(rangeValue) {
    const facets = await getJSON("/api/facets?range=" + encodeURIComponent(rangeValue || "24h"));
    for (const [id, values, all] of [["app", facets.apps, "all apps"], ["model", facets.models, "all models"]]) {
      const select = $(id);
      if (!select) continue;
      const wanted = select.value || params.get(id) || "";
      const options = [el("option", { value: "" }, all)];
      for (const v of new Set([...values, ...(wanted ? [wanted] : [])])) options.push(el("option", { value: v }, v));
      select.replaceChildren(...options);
      select.value = wanted;
    }
  }

  function layout(extra) {
    return Object.assign({
      margin: { l: 50, r: 16, t: 8, b: 40 }, height: 280, showlegend: true,
      legend: { orientation: "h", y: -0.2 }, xaxis: { type: "date" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    }, extra || {});
  }
  function plot(id, traces, extraLayout) {
    return Plotly.react($(id), traces, layout(extraLayout), PLOT_CONFIG);
  }

  // -- pages ------------------------------------------------------------------------------
  const pages = {};

  pages.overview = {
    filters: [["range", "range"], ["app", "app"]],
    async draw(q) {
      const data = await getJSON("/api/overview?" + q);
      const t = data.totals;
      $("totals").replaceChildren(
        card("events", fmt(t.events)), card("traces", fmt(t.traces)),
        card("completions", fmt(t.completions)), card("cost", usd(t.cost_usd)),
        card("latency p50", t.latency_p50_ms === null ? "–" : fmt(t.latency_p50_ms, 0) + " ms"),
        card("latency p95", t.latency_p95_ms === null ? "–" : fmt(t.latency_p95_ms, 0) + " ms"),
      );
      const tr = data.traffic;
      await plot("traffic", tr.series.map((s) => ({
        type: "scatter", mode: "lines", name: s.name, x: tr.t, y: s.y, stackgroup: "events",
        line: { color: COLORS[s.name] },
      })), { yaxis: { title: { text: "events / " + data.window.bucket_s + " s" } } });
      const c = data.completions;
      await plot("cost", [{ type: "bar", name: "cost USD", x: c.t, y: c.cost_usd, marker: { color: "#17becf" } }],
        { showlegend: false });
      await plot("latency", [
        { type: "scatter", mode: "lines+markers", name: "p50", x: c.t, y: c.latency_p50_ms, connectgaps: false },
        { type: "scatter", mode: "lines+markers", name: "p95", x: c.t, y: c.latency_p95_ms, connectgaps: false },
      ]);
      const s = data.scores;
      await plot("scores", Object.entries(s.counts).map(([name, counts]) => ({
        type: "bar", name, x: s.centers, y: counts, width: s.width, opacity: 0.7, marker: { color: COLORS[name] },
      })), { barmode: "overlay", xaxis: { type: "linear", range: [0, 1], title: { text: "score" } } });
    },
  };

  pages.drift = {
    filters: [["range", "range"], ["app", "app"]],
    async draw(q) {
      const data = await getJSON("/api/drift?" + q);
      const box = $("drift-charts");
      const keyOf = (s) => [s.segment, s.stream, s.detector].join("\u0000");
      const keep = new Set(data.series.map(keyOf));
      for (const panel of [...box.children]) if (!keep.has(panel.dataset.key)) { Plotly.purge(panel.querySelector(".chart")); panel.remove(); }
      // Lay every panel out before drawing, so each chart is sized to its final grid cell.
      const panels = data.series.map((s) => {
        let panel = [...box.children].find((p) => p.dataset.key === keyOf(s));
        if (!panel) {
          panel = el("div", { class: "panel drift", dataset: { key: keyOf(s) } },
            el("h2", {}, s.segment), el("p", { class: "muted" }, `${s.stream} · ${s.detector}`),
            el("div", { class: "chart" }));
          box.append(panel);
        }
        return panel;
      });
      for (const [i, s] of data.series.entries()) {
        // A trace series (the recent mean between detections) has no threshold of its own.
        const threshold = s.trace ? [] : [
          { type: "scatter", mode: "lines", name: "threshold", x: s.t, y: s.threshold, line: { dash: "dash", color: "#999" } },
        ];
        await Plotly.react(panels[i].querySelector(".chart"), [
          { type: "scatter", mode: "lines", name: "statistic", x: s.t, y: s.statistic, line: { color: "#1f77b4" } },
          ...threshold,
          { type: "scatter", mode: "markers", name: "detection", x: s.detections.t, y: s.detections.statistic,
            marker: { color: "#d62728", size: 11, symbol: "x" } },
        ], layout({ height: 240 }), PLOT_CONFIG);
      }
      $("drift-empty").hidden = data.series.length > 0;
      $("drift-summary").textContent = `${data.series.length} series, ${data.detections} detections`;
    },
  };

  pages.alerts = {
    filters: [["range", "range"], ["status-filter", "status"], ["severity-filter", "severity"]],
    async draw(q) {
      const data = await getJSON("/api/alerts?" + q);
      fillBody($("alerts"), data.incidents.map((a) => el("tr", { class: "alert " + a.status, dataset: { dedupKey: a.dedup_key } },
        el("td", {}, el("span", { class: "badge " + a.status }, a.status)),
        el("td", {}, el("span", { class: "badge sev-" + a.severity }, a.severity)),
        el("td", {}, a.rule), el("td", {}, a.summary), el("td", {}, a.app), el("td", {}, a.segment),
        el("td", {}, a.first_seen), el("td", {}, a.last_seen), el("td", { class: "num" }, fmt(a.updates)),
        el("td", {}, a.runbook_url ? el("a", { href: a.runbook_url, rel: "noopener noreferrer", target: "_blank", class: "runbook" }, "runbook") : "–"),
        el("td", {}, a.trace_id ? el("a", { href: "/traces/" + encodeURIComponent(a.trace_id) }, a.trace_id.slice(0, 8)) : "–"),
      )));
      $("alerts-empty").hidden = data.incidents.length > 0;
      $("alerts-summary").textContent = `${data.incidents.length} incidents, ${data.firing} firing`;
    },
  };

  pages.traces = {
    filters: [["range", "range"], ["app", "app"], ["model", "model"], ["trace-prefix", "trace"],
      ["min-toxicity", "min_toxicity"], ["min-injection", "min_injection"]],
    async draw(q) {
      const data = await getJSON("/api/traces?" + q);
      fillBody($("traces"), data.traces.map((t) => {
        const href = "/traces/" + encodeURIComponent(t.trace_id);
        const row = el("tr", { class: "trace-row", dataset: { traceId: t.trace_id } },
          el("td", {}, t.start), el("td", {}, el("a", { href, class: "trace-link" }, t.trace_id)),
          el("td", {}, t.app), el("td", { class: "num" }, t.spans, " ", el("span", { class: "muted" }, t.kinds.join(", "))),
          el("td", {}, t.models.join(", ")), el("td", {}, t.prompt_versions.join(", ")),
          el("td", { class: "num" }, fmt(t.latency_ms, 0)), el("td", { class: "num" }, fmt(t.tokens)),
          el("td", { class: "num" }, usd(t.cost_usd)), el("td", { class: "num" }, fmt(t.max_toxicity, 3)),
          el("td", { class: "num" }, fmt(t.max_injection, 3)), el("td", { class: "num" }, fmt(t.feedback, 2)));
        row.addEventListener("click", (e) => { if (!(e.target instanceof HTMLAnchorElement)) location.href = href; });
        return row;
      }));
      $("traces-empty").hidden = data.traces.length > 0;
    },
  };

  function kv(pairs) {
    return el("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }
  function spanCard(s, i) {
    const head = el("h3", {}, `${i + 1}. ${s.event_type}`, el("span", { class: "muted" }, " " + s.time + " UTC"));
    const facts = kv([
      ["model", s.model], ["version", s.model_version], ["adapter", s.adapter],
      ["prompt", s.prompt_name ? `${s.prompt_name} v${s.prompt_version}` : ""],
      ["latency", s.latency_ms === null ? null : fmt(s.latency_ms, 1) + " ms"],
      ["tokens in", s.input_tokens], ["tokens out", s.output_tokens], ["cost", s.cost_usd === null ? null : usd(s.cost_usd)],
      ["finish", s.finish_reason], ["store", s.store], ["truncated by SDK", s.truncated ? "yes" : null],
    ]);
    const scores = Object.entries(s.scores);
    const scoreList = scores.length ? el("ul", { class: "scores" }, scores.map(([k, v]) =>
      el("li", { dataset: { score: k } }, el("span", { class: "label" }, k), " ", fmt(v, 3)))) : null;
    const judge = s.judge.length ? el("ul", { class: "scores judge" }, s.judge.map((j) =>
      el("li", {}, el("span", { class: "label" }, "judge " + j.rubric), " ", j.score === null ? "unreadable" : fmt(j.score, 2)))) : null;
    const text = [];
    if (s.messages) for (const m of s.messages) text.push(el("div", { class: "message" }, el("div", { class: "role" }, m.role), el("pre", { class: "text" }, m.content)));
    if (s.query !== undefined && s.query !== null) text.push(el("div", { class: "message" }, el("div", { class: "role" }, "query"), el("pre", { class: "text" }, s.query)));
    if (s.documents) text.push(el("ol", { class: "documents" }, s.documents.map((d) =>
      el("li", {}, el("span", { class: "label" }, d.id), " ", d.score === null ? "" : fmt(d.score, 3), " ",
        el("span", { class: "muted" }, d.source || ""), el("pre", { class: "text" }, d.text || "")))));
    if (s.text !== undefined && s.text !== null) text.push(el("pre", { class: "text completion" }, s.text));
    if (s.feedback) text.push(kv([["score", s.feedback.score], ["label", s.feedback.label], ["source", s.feedback.source], ["comment", s.feedback.comment]]));
    return el("article", { class: "span " + s.event_type, dataset: { eventType: s.event_type, spanId: s.span_id } },
      head, facts, scoreList, judge, ...text);
  }

  pages.trace = {
    filters: [],
    async draw() {
      const id = body.dataset.traceId;
      let data;
      try {
        data = await getJSON("/api/traces/" + encodeURIComponent(id));
      } catch (err) {
        $("trace-missing").hidden = false;
        throw err;
      }
      $("trace-missing").hidden = true;
      const t = data.totals;
      $("trace-totals").replaceChildren(card("app", data.app), card("start (UTC)", data.start), card("spans", fmt(t.spans)),
        card("latency", fmt(t.latency_ms, 0) + " ms"), card("tokens", fmt(t.tokens)), card("cost", usd(t.cost_usd)));
      const w = data.waterfall;
      await plot("waterfall", [{
        type: "bar", orientation: "h", y: w.labels, x: w.duration_ms.map((d) => Math.max(d, 1)), base: w.start_ms,
        marker: { color: w.event_types.map((k) => COLORS[k] || "#888") },
        hovertemplate: "%{y}: %{base:.0f} ms + %{x:.0f} ms<extra></extra>",
      }], { showlegend: false, height: 60 + 34 * w.labels.length, xaxis: { type: "linear", title: { text: "ms since the trace began" } },
        yaxis: { autorange: "reversed", type: "category" }, margin: { l: 110, r: 16, t: 8, b: 40 } });
      $("spans").replaceChildren(...data.spans.map(spanCard));
    },
  };

  pages.registry = {
    filters: [],
    async draw() {
      const data = await getJSON("/api/registry");
      const models = [];
      for (const m of data.models) for (const v of m.versions) {
        const active = v.version === m.active_version;
        models.push(el("tr", { class: active ? "active-version" : "", dataset: { model: m.name, version: v.version } },
          el("td", {}, m.name), el("td", {}, v.version), el("td", {}, el("span", { class: "badge " + v.status }, v.status)),
          el("td", {}, v.base_model), el("td", {}, v.adapter_path || "–"), el("td", {}, v.activated || "–"),
          el("td", {}, v.updated), el("td", {}, v.reason)));
      }
      fillBody($("models"), models);
      fillBody($("adapters"), data.adapters.flatMap((a) => a.versions.map((v) => el("tr", {},
        el("td", {}, a.name), el("td", {}, v.version), el("td", {}, v.status), el("td", {}, v.base_model),
        el("td", {}, v.adapter_path), el("td", {}, v.updated)))));
      fillBody($("prompts"), data.prompts.flatMap((p) => p.versions.map((v) => el("tr", { dataset: { prompt: p.name, version: v.version } },
        el("td", {}, p.name), el("td", {}, v.version), el("td", {}, v.labels.map((l) => el("span", { class: "badge label" }, l))),
        el("td", {}, v.status), el("td", {}, v.updated), el("td", {}, el("pre", { class: "text small" }, v.template))))));
      fillBody($("experiments"), data.experiments.map((e) => el("tr", { dataset: { test: e.test } },
        el("td", {}, e.test), el("td", {}, e.prompt), el("td", {}, e.label), el("td", {}, el("span", { class: "badge " + e.status }, e.status)),
        el("td", {}, Object.entries(e.variants).map(([k, v]) => `${k} → v${v} (${fmt(e.weights[k], 2)})`).join(", ")),
        el("td", {}, e.control), el("td", {}, e.split_by), el("td", {}, e.act ? "yes" : "no"))));
    },
  };

  // -- refresh loop -----------------------------------------------------------------------
  const current = pages[PAGE];
  let timer = null;
  let running = false;
  async function refresh() {
    if (!current || running) return;
    running = true;
    clearTimeout(timer);
    try {
      // Options first: a filter from the query string can only select an existing option.
      if ($("app") || $("model")) await loadFacets(filters(current.filters).get("range"));
      const q = filters(current.filters);
      await current.draw(q.toString());
      setStatus("updated " + new Date().toLocaleTimeString("en-GB", { timeZone: "UTC" }) + " UTC");
      body.dataset.loaded = String(Number(body.dataset.loaded || 0) + 1);
    } catch (err) {
      setStatus("error: " + err.message, true);
      body.dataset.failed = String(Number(body.dataset.failed || 0) + 1);
    } finally {
      running = false;
      // A hidden tab stops polling; becoming visible again refreshes at once (below).
      timer = setTimeout(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
    }
  }
  function start() {
    if (!current) return;
    for (const [id, name] of current.filters) bindFilter(id, name);
    for (const a of document.querySelectorAll("header nav a")) {
      if (params.has("range") && a.getAttribute("href") !== "/registry") a.setAttribute("href", a.getAttribute("href") + "?range=" + encodeURIComponent(params.get("range")));
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    refresh();
  }
  if (typeof Plotly === "undefined") setStatus("error: plotly.js did not load", true);
  else start();
})();
