// The operator console: health, flags and configs over the JSON API (/api/v1/, see README).
//
// Rules this file keeps: every value from the service is put on the page as text
// (textContent / text nodes through el(), never innerHTML), the token lives in
// sessionStorage and travels only in the Authorization header, every write sends the etag
// the page displayed, and controls for writes the policy refuses are not drawn at all.
"use strict";

(() => {
  const TOKEN_KEY = "platform-admin.token";
  const DAY_MS = 24 * 3600 * 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const state = { session: null, stopLive: null, renderId: 0 };

  // ---- DOM helpers: text only -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    return append(node, ...children);
  }

  // Appends children the way el() does: strings as text, null / false skipped (the DOM's
  // own append would write them out as the text "null").
  function append(node, ...children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function fmtTime(ts) {
    if (!ts) return "—";
    const date = new Date(ts);
    if (Number.isNaN(date.getTime())) return String(ts);
    return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function shortEnum(value, prefix) {
    return String(value || "").startsWith(prefix) ? String(value).slice(prefix.length) : String(value || "");
  }

  function notice(text, kind) {
    const box = document.getElementById("notice");
    box.textContent = text || "";
    box.className = "notice" + (kind ? " " + kind : "");
    box.hidden = !text;
  }

  // ---- API --------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, error) {
      super(error.message || "HTTP " + status);
      this.status = status;
      this.code = error.code || "";
      this.reason = error.reason || "";
      this.fieldViolations = error.fieldViolations || [];
    }
  }

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  async function request(path, init) {
    const response = await fetch(path, { cache: "no-store", ...init });
    let body = {};
    try { body = await response.json(); } catch (_) { body = {}; }
    if (!response.ok) {
      const error = new ApiError(response.status, body.error || { message: response.statusText });
      if (response.status === 401 && !state.session?.devMode) showSignIn(error.message);
      throw error;
    }
    return body;
  }

  function api(method, body) {
    return request("/api/v1/" + method, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body || {}),
    });
  }

  async function listAll(method, body, field) {
    const items = [];
    let pageToken = "";
    do {
      const page = await api(method, { ...body, pageSize: 1000, pageToken });
      items.push(...(page[field] || []));
      pageToken = page.nextPageToken || "";
    } while (pageToken);
    return items;
  }

  function can(method) {
    return Boolean(state.session && state.session.can[method]);
  }

  // ---- live updates: server-sent events read with fetch (EventSource cannot send a token)

  function liveUpdates(topics, onChange) {
    const controller = new AbortController();
    let timer = null;
    const changed = () => {
      if (timer !== null) return;
      timer = setTimeout(() => { timer = null; if (!controller.signal.aborted) onChange(); }, 150);
    };
    const setLive = (live) => {
      document.body.dataset.live = live ? "on" : "off";
      const label = document.getElementById("live-state");
      if (label) label.textContent = live ? "● live" : "reconnecting…";
    };
    (async () => {
      let first = true;
      while (!controller.signal.aborted) {
        try {
          const response = await fetch("/api/v1/events?topics=" + topics.join(","), {
            headers: authHeaders(), signal: controller.signal, cache: "no-store",
          });
          if (!response.ok) throw new Error("events: HTTP " + response.status);
          setLive(true);
          if (!first) changed(); // reconnected: changes may have been missed meanwhile
          first = false;
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let cut;
            while ((cut = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              if (block.split("\n").includes("event: change")) changed();
            }
          }
        } catch (_) {
          if (controller.signal.aborted) return;
        }
        setLive(false);
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    })();
    return () => { controller.abort(); setLive(false); };
  }

  // ---- sign-in and session ----------------------------------------------------------

  function showSignIn(message) {
    stopLive();
    document.getElementById("sign-in").hidden = false;
    document.getElementById("main").replaceChildren();
    document.getElementById("sign-in-error").textContent = message || "";
    document.getElementById("sign-out").hidden = true;
    document.getElementById("who").textContent = "";
  }

  async function loadSession() {
    try {
      state.session = await request("/api/v1/session", { headers: authHeaders() });
    } catch (error) {
      state.session = null;
      if (error.status === 401) {
        // No token yet: just the form; a refused token: the server's reason (expired, ...).
        showSignIn(sessionStorage.getItem(TOKEN_KEY) ? error.message : "");
        sessionStorage.removeItem(TOKEN_KEY);
      } else {
        showSignIn("cannot reach the service: " + error.message);
      }
      return false;
    }
    const session = state.session;
    document.getElementById("dev-banner").hidden = !session.devMode;
    document.getElementById("sign-in").hidden = true;
    document.getElementById("sign-out").hidden = session.devMode;
    document.getElementById("who").textContent = session.devMode
      ? "anonymous platform_admin"
      : (session.subject || "") + " · " + session.roles.join(", ") + (session.tenantId ? " · tenant " + session.tenantId : "");
    for (const link of document.querySelectorAll("nav a")) {
      const needs = { health: "HealthService/GetPlatformHealth", flags: "FlagService/ListFlags", configs: "ConfigService/ListConfigKeys" };
      link.hidden = !can(needs[link.dataset.page]);
    }
    return true;
  }

  // ---- router -----------------------------------------------------------------------

  function stopLive() {
    if (state.stopLive) state.stopLive();
    state.stopLive = null;
  }

  async function route() {
    if (!state.session) return;
    stopLive();
    notice("");
    const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
    let [page, ...rest] = hash.split("/");
    const defaults = ["health", "flags", "configs"].filter((p) => !document.querySelector(`nav a[data-page="${p}"]`).hidden);
    if (!defaults.includes(page)) page = defaults[0] || "";
    for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
    const main = document.getElementById("main");
    const id = ++state.renderId;
    const draw = async (render) => {
      const started = performance.now();
      try {
        const content = await render();
        if (id === state.renderId) main.replaceChildren(content);
      } catch (error) {
        if (id === state.renderId && error.status !== 401) main.replaceChildren(el("p", { class: "error" }, error.message));
      }
      // Read by the browser tests: which render finished, and how long it took.
      document.body.dataset.renderMs = String(Math.round(performance.now() - started));
      document.body.dataset.rendered = String(id);
    };
    if (page === "health") {
      state.stopLive = liveUpdates(["health"], () => draw(healthPage));
      await draw(healthPage);
    } else if (page === "flags" && rest.length) {
      await draw(() => flagPage(rest.join("/")));
    } else if (page === "flags") {
      state.stopLive = liveUpdates(["flags"], () => draw(flagsPage));
      await draw(flagsPage);
    } else if (page === "configs") {
      await draw(configsPage);
    } else {
      main.replaceChildren(el("p", {}, "This token's roles give access to none of the pages."));
    }
  }

  // ---- health -----------------------------------------------------------------------


  function statusBadge(value) {
    const name = shortEnum(value, "HEALTH_STATUS_") || "UNSPECIFIED";
    return el("span", { class: "status status-" + name }, name);
  }

  function chart(results) {
    const width = 320, height = 64, strip = 10;
    const end = Date.now();
    const points = results
      .map((r) => ({ t: new Date(r.checkTime).getTime(), status: shortEnum(r.status, "HEALTH_STATUS_"), latency: Number(r.details?.latency_ms) }))
      .filter((p) => p.t >= end - DAY_MS)
      .sort((a, b) => a.t - b.t);
    // The last 24 hours, or less when the source is younger: its whole history, readable.
    const start = points.length ? Math.max(end - DAY_MS, points[0].t) : end - DAY_MS;
    const span = Math.max(end - start, 1000);
    const x = (t) => ((t - start) / span) * width;
    const box = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    box.append(svg("title", {}, `check results from ${fmtTime(new Date(start).toISOString())}: status (bottom strip) and latency (line)`));
    const colors = { HEALTHY: "#1a7f37", DEGRADED: "#b58100", UNHEALTHY: "#cf222e" };
    points.forEach((p, i) => {
      const next = i + 1 < points.length ? points[i + 1].t : end;
      box.append(svg("rect", { x: x(p.t).toFixed(1), y: height - strip, width: Math.max(1, x(next) - x(p.t)).toFixed(1), height: strip, fill: colors[p.status] || "#8c959f" }));
    });
    const timed = points.filter((p) => Number.isFinite(p.latency));
    if (timed.length) {
      const top = Math.max(...timed.map((p) => p.latency), 1);
      const y = (v) => (height - strip - 3 - (v / top) * (height - strip - 17)).toFixed(1);
      box.append(svg("polyline", { fill: "none", stroke: "#0969da", "stroke-width": 1.5, points: timed.map((p) => `${x(p.t).toFixed(1)},${y(p.latency)}`).join(" ") }));
      box.append(svg("text", { x: 2, y: 10, "font-size": 9, fill: "#656d76" }, `max ${top} ms · from ${fmtTime(new Date(start).toISOString()).slice(11, 16)} UTC`));
    } else {
      box.append(svg("text", { x: 2, y: 12, "font-size": 9, fill: "#656d76" }, points.length ? "no latency reported" : "no checks in 24 h"));
    }
    return box;
  }

  async function healthPage() {
    const health = await api("HealthService/GetPlatformHealth", {});
    const sources = health.sources || [];
    // The table is drawn from GetPlatformHealth alone; each chart fills in when its check
    // results arrive (a few at a time), so the page answers at once with many sources.
    const since = new Date(Date.now() - DAY_MS).toISOString();
    const charts = sources.map(() => el("div", { class: "chart-slot" }, chart([])));
    const queue = sources.map((s, i) => [s, i]);
    const worker = async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const [s, i] = next;
        try {
          const r = await api("HealthService/ListCheckResults", { sourceId: s.sourceId, startTime: since, pageSize: 1000 });
          charts[i].replaceChildren(chart(r.results || []));
        } catch (_) { /* the chart stays empty; the row still says the last status */ }
      }
    };
    const chartsDone = Promise.all([1, 2, 3, 4].map(worker)).then(() => { document.body.dataset.charts = String(Date.now()); });
    chartsDone.catch(() => {});
    // Since when the platform has been at its worst status, from each source's current status
    // and its start: UNHEALTHY holds since the first source still unhealthy turned so; a
    // better status holds only since the last source changed (before that, it may have been
    // worse).
    const worst = shortEnum(health.status, "HEALTH_STATUS_");
    const times = (list) => list.filter((s) => s.statusTime).map((s) => new Date(s.statusTime).getTime());
    const atWorst = sources.filter((s) => shortEnum(s.effectiveStatus, "HEALTH_STATUS_") === worst);
    const sinceTimes = worst === "UNHEALTHY"
      ? [Math.min(...times(atWorst))].filter(Number.isFinite)
      : [Math.max(...times(sources))].filter(Number.isFinite);
    const overall = el("div", { class: "overall", id: "platform-status" },
      el("h1", {}, "Platform health"), statusBadge(health.status),
      el("span", { class: "muted", id: "platform-since" },
        sinceTimes.length ? "since " + fmtTime(new Date(Math.min(...sinceTimes)).toISOString()) : ""),
      el("span", { class: "muted" }, `${sources.length} sources · evaluated ${fmtTime(health.evaluateTime)}`),
      el("span", { class: "muted", id: "live-state" }, document.body.dataset.live === "on" ? "● live" : "connecting…"));
    const rows = sources.map((s, i) => {
      const d = s.lastDetails || {};
      const protocolStatus = d.http_status ?? d.grpc_status ?? "—";
      const other = Object.fromEntries(Object.entries(d).filter(([k]) => !["latency_ms", "http_status", "grpc_status", "error"].includes(k)));
      return el("tr", { dataset: { source: s.serviceId } },
        el("td", {}, el("strong", {}, s.serviceId), el("br"), el("span", { class: "muted mono" }, s.sourceId)),
        el("td", { class: "source-status" }, statusBadge(s.effectiveStatus),
          s.effectiveStatus !== s.status ? el("div", { class: "muted" }, "checks: " + shortEnum(s.status, "HEALTH_STATUS_")) : null),
        el("td", {}, s.stale ? el("span", { class: "stale" }, "stale") : "no"),
        el("td", {}, fmtTime(s.statusTime)),
        el("td", {}, fmtTime(s.lastHeartbeatTime)),
        el("td", {}, fmtTime(s.lastCheckTime)),
        el("td", { class: "num" }, d.latency_ms === undefined ? "—" : `${d.latency_ms} ms`),
        el("td", {}, String(protocolStatus)),
        el("td", { class: "details" }, d.error === undefined ? "" : String(d.error),
          Object.keys(other).length ? el("div", { class: "muted mono" }, JSON.stringify(other)) : null),
        el("td", {}, charts[i]));
    });
    return el("div", {}, overall,
      sources.length ? el("table", { id: "sources" },
        el("thead", {}, el("tr", {}, ["Service", "Status", "Stale", "Since", "Last heartbeat", "Last check", "Latency", "HTTP / gRPC", "Details", "Last 24 h"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows))
        : el("p", { class: "muted" }, "No health sources registered."));
  }

  // ---- flags ------------------------------------------------------------------------

  async function flagsPage() {
    const flags = await listAll("FlagService/ListFlags", { showArchived: true }, "flags");
    // Kept across live re-draws, so a change elsewhere does not undo the operator's filter.
    const search = el("input", { type: "search", id: "flag-search", placeholder: "search key or description", size: 40, value: state.flagSearch || "" });
    const archived = el("input", { type: "checkbox", id: "show-archived", checked: Boolean(state.flagArchived) });
    // Up to thousands of rows: built with plain DOM calls (still text only), not el().
    const cell = (row, text, className) => {
      const td = row.insertCell();
      td.textContent = text;
      if (className) td.className = className;
      return td;
    };
    const rows = flags.map((f) => {
      const row = document.createElement("tr");
      row.dataset.flag = f.key;
      row.hidden = f.archived;
      const link = document.createElement("a");
      link.href = "#/flags/" + encodeURIComponent(f.key);
      link.textContent = f.key;
      row.insertCell().append(link);
      cell(row, f.defaultEnabled ? "on" : "off");
      cell(row, String(f.enabledTenantIds.length), "num");
      cell(row, String(f.disabledTenantIds.length), "num");
      cell(row, f.archived ? "archived" : "");
      cell(row, f.description, "muted");
      return row;
    });
    const texts = flags.map((f) => (f.key + " " + f.description).toLowerCase());
    const count = el("span", { class: "muted", id: "flag-count" });
    const filter = () => {
      state.flagSearch = search.value;
      state.flagArchived = archived.checked;
      const q = search.value.trim().toLowerCase();
      let shown = 0;
      rows.forEach((row, i) => {
        row.hidden = (flags[i].archived && !archived.checked) || (q && !texts[i].includes(q));
        if (!row.hidden) shown += 1;
      });
      count.textContent = `${shown} of ${flags.length} flags`;
    };
    search.addEventListener("input", filter);
    archived.addEventListener("change", filter);
    filter();
    return el("div", {}, el("h1", {}, "Flags"),
      el("div", { class: "toolbar" }, search, el("label", {}, archived, " show archived"), count),
      el("table", { id: "flags" },
        el("thead", {}, el("tr", {}, ["Key", "Default", "Enabled for", "Disabled for", "Archived", "Description"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows)));
  }

  function fieldErrors(container, violations) {
    for (const slot of container.querySelectorAll(".field-error")) slot.textContent = "";
    const unplaced = [];
    for (const v of violations) {
      const slot = container.querySelector(`.field-error[data-field="${CSS.escape(v.field)}"]`);
      if (slot) slot.textContent = v.description;
      else unplaced.push(`${v.field}: ${v.description}`);
    }
    return unplaced;
  }

  async function flagPage(key) {
    const { flag } = await api("FlagService/GetFlag", { key });
    return flagView(flag);
  }

  function flagView(flag) {
    const root = el("div", { id: "flag", dataset: { etag: flag.etag } });
    const redraw = (fresh) => root.replaceWith(flagView(fresh));
    const write = async (method, body) => {
      try {
        const answer = await api(method, { key: flag.key, etag: flag.etag, ...body });
        notice("Saved.");
        redraw(answer.flag);
      } catch (error) {
        if (error.code === "ABORTED") {
          const { flag: fresh } = await api("FlagService/GetFlag", { key: flag.key });
          notice(`Someone else changed this flag since it was shown (etag ${flag.etag}, now ${fresh.etag}). ` +
            "Your change was not applied; this is the current state.", "conflict");
          redraw(fresh);
        } else if (error.fieldViolations.length) {
          const rest = fieldErrors(root, error.fieldViolations);
          notice(rest.length ? rest.join("; ") : "");
        } else {
          notice(error.message, "conflict");
        }
      }
    };
    const editable = !flag.archived;
    const tenantList = (title, ids, id) => el("div", {},
      el("h2", {}, `${title} (${ids.length})`),
      ids.length ? el("ul", { id }, ids.map((t) => el("li", { dataset: { tenant: t } }, el("code", {}, t), " ",
        can("FlagService/SetTenantOverride") && editable
          ? el("button", { type: "button", class: "remove", onclick: () => write("FlagService/SetTenantOverride", { tenantId: t, override: "TENANT_OVERRIDE_INHERIT" }) }, "Remove")
          : null)))
        : el("p", { class: "muted" }, "none"));
    const tenantInput = el("input", { id: "tenant-input", placeholder: "tenant ULID", size: 30, autocomplete: "off" });
    const choice = el("select", { id: "tenant-override" },
      el("option", { value: "TENANT_OVERRIDE_ENABLED" }, "enabled"), el("option", { value: "TENANT_OVERRIDE_DISABLED" }, "disabled"));
    const addForm = el("form", { class: "inline", id: "add-tenant", onsubmit: (event) => {
      event.preventDefault();
      write("FlagService/SetTenantOverride", { tenantId: tenantInput.value.trim().toUpperCase(), override: choice.value });
    } },
      el("label", {}, "Tenant", tenantInput, el("span", { class: "field-error", dataset: { field: "tenant_id" } })),
      el("label", {}, "Override", choice),
      el("button", { type: "submit", class: "primary" }, "Add tenant"));
    append(root,
      el("p", {}, el("a", { href: "#/flags" }, "← all flags")),
      el("h1", {}, flag.key, flag.archived ? el("span", { class: "status status-UNSPECIFIED" }, " archived ") : null),
      el("div", { class: "description", id: "flag-description" }, flag.description || "(no description)"),
      el("p", { class: "muted" }, `etag ${flag.etag} · updated ${fmtTime(flag.updateTime)} · created ${fmtTime(flag.createTime)}`),
      el("p", { id: "flag-default" }, "Default: ", el("strong", {}, flag.defaultEnabled ? "on" : "off"), " ",
        can("FlagService/UpdateFlag") && editable
          ? el("button", { type: "button", id: "toggle-default", onclick: () => write("FlagService/UpdateFlag", { defaultEnabled: !flag.defaultEnabled, updateMask: "defaultEnabled" }) },
            flag.defaultEnabled ? "Turn default off" : "Turn default on")
          : null,
        " ",
        can("FlagService/ArchiveFlag")
          ? el("button", { type: "button", id: "archive", onclick: () => write(flag.archived ? "FlagService/UnarchiveFlag" : "FlagService/ArchiveFlag", {}) },
            flag.archived ? "Restore" : "Archive")
          : null),
      el("div", { class: "lists" },
        tenantList("Enabled for", flag.enabledTenantIds, "enabled-tenants"),
        tenantList("Disabled for", flag.disabledTenantIds, "disabled-tenants")),
      can("FlagService/SetTenantOverride") && editable ? addForm : null);
    return root;
  }

  // ---- configs ----------------------------------------------------------------------

  function valueText(value) {
    if (!value) return "—";
    if (value.intValue !== undefined) return String(value.intValue);
    if (value.boolValue !== undefined) return String(value.boolValue);
    if (value.stringValue !== undefined) return JSON.stringify(value.stringValue);
    return "—";
  }

  const scopeName = (s) => shortEnum(s, "CONFIG_SCOPE_");

  async function configsPage() {
    const { keys } = await api("ConfigService/ListConfigKeys", {});
    const session = state.session;
    const root = el("div", {}, el("h1", {}, "Configs"));
    const byKey = Object.fromEntries(keys.map((k) => [k.key, k]));
    const bounds = (k) => [
      k.minValue !== undefined ? `min ${k.minValue}` : "", k.maxValue !== undefined ? `max ${k.maxValue}` : "",
      k.maxLength !== undefined ? `max length ${k.maxLength}` : "", k.stringFormat ? `format ${k.stringFormat}` : "",
    ].filter(Boolean).join(", ");
    root.append(el("h2", {}, "Allowed keys"), el("table", { id: "config-keys" },
      el("thead", {}, el("tr", {}, ["Key", "Type", "Scopes", "Bounds", "Default", "Description"].map((h) => el("th", {}, h)))),
      el("tbody", {}, keys.map((k) => el("tr", { dataset: { key: k.key } },
        el("td", {}, el("code", {}, k.key)), el("td", {}, shortEnum(k.valueType, "CONFIG_VALUE_TYPE_")),
        el("td", {}, k.allowedScopes.map(scopeName).join(", ")), el("td", {}, bounds(k)),
        el("td", {}, valueText(k.defaultValue)), el("td", {}, k.description))))));

    // Stored values, filtered by tenant and node.
    const tenantFilter = el("input", { id: "filter-tenant", placeholder: "tenant ULID", size: 28, value: session.tenantScoped ? session.tenantId : "", disabled: session.tenantScoped });
    const nodeFilter = el("input", { id: "filter-node", placeholder: "node id", size: 16 });
    const valuesBox = el("div", { id: "config-values" });
    const historyBox = el("div", { id: "config-history" });
    const loadValues = async () => {
      const body = { tenantId: tenantFilter.value.trim().toUpperCase(), nodeId: nodeFilter.value.trim() };
      try {
        const rows = await listAll("ConfigService/ListConfigs", body, "configs");
        valuesBox.replaceChildren(rows.length ? el("table", { id: "config-rows" },
          el("thead", {}, el("tr", {}, ["Key", "Scope", "Tenant", "Node", "Value", "Description", "Updated", "Etag", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows.map((c) => el("tr", { dataset: { key: c.key, scope: scopeName(c.scope), tenant: c.tenantId, node: c.nodeId } },
            el("td", {}, el("code", {}, c.key)), el("td", {}, scopeName(c.scope)), el("td", { class: "mono" }, c.tenantId),
            el("td", {}, c.nodeId), el("td", { class: "value" }, valueText(c.value)), el("td", {}, c.description),
            el("td", {}, fmtTime(c.updateTime)), el("td", {}, c.etag),
            el("td", { class: "actions" }, el("button", { type: "button", class: "history", onclick: () => showHistory(c, "") }, "History"), " ",
              can("ConfigService/SetConfig") ? el("button", { type: "button", class: "edit", onclick: () => editRow(c) }, "Edit") : null)))))
          : el("p", { class: "muted" }, "No stored values match."));
      } catch (error) {
        valuesBox.replaceChildren(el("p", { class: "error" }, error.message));
      }
    };
    const showHistory = async (c, pageToken) => {
      const body = { key: c.key, scope: c.scope, tenantId: c.tenantId, nodeId: c.nodeId, pageSize: 20, pageToken };
      try {
        const page = await api("ConfigService/ListConfigHistory", body);
        historyBox.replaceChildren(el("div", {}, el("h2", {}, `History of ${c.key} at ${scopeName(c.scope)}`, c.tenantId ? ` tenant ${c.tenantId}` : "", c.nodeId ? ` node ${c.nodeId}` : ""),
          el("table", { id: "history-rows" },
            el("thead", {}, el("tr", {}, ["Time", "Action", "Old value", "New value", "Actor"].map((h) => el("th", {}, h)))),
            el("tbody", {}, (page.entries || []).map((h) => el("tr", {},
              el("td", {}, fmtTime(h.changeTime)), el("td", {}, shortEnum(h.action, "CONFIG_CHANGE_ACTION_")),
              el("td", { class: "old" }, valueText(h.oldValue)), el("td", { class: "new" }, valueText(h.newValue)),
              el("td", { class: "mono actor" }, h.changedBy || "—"))))),
          page.nextPageToken ? el("button", { type: "button", id: "history-older", onclick: () => showHistory(c, page.nextPageToken) }, "Older entries") : null));
      } catch (error) {
        historyBox.replaceChildren(el("p", { class: "error" }, error.message));
      }
    };
    root.append(el("h2", {}, "Stored values"),
      el("form", { class: "inline", id: "filter-form", onsubmit: (e) => { e.preventDefault(); loadValues(); } },
        el("label", {}, "Tenant", tenantFilter), el("label", {}, "Node", nodeFilter), el("button", { type: "submit" }, "Filter")),
      valuesBox, historyBox);

    // Effective value for a tenant / node, with the scope it came from.
    const keyOptions = () => keys.map((k) => el("option", { value: k.key }, k.key));
    const resolveKey = el("select", { id: "resolve-key" }, keyOptions());
    const resolveTenant = el("input", { id: "resolve-tenant", placeholder: "tenant ULID", size: 28, value: session.tenantScoped ? session.tenantId : "" });
    const resolveNode = el("input", { id: "resolve-node", placeholder: "node id", size: 16 });
    const resolved = el("span", { id: "resolved" });
    const resolveForm = el("form", { class: "inline", id: "resolve-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const r = await api("ConfigService/ResolveConfig", { key: resolveKey.value, tenantId: resolveTenant.value.trim().toUpperCase(), nodeId: resolveNode.value.trim() });
        fieldErrors(resolveForm, []);
        resolved.textContent = `${valueText(r.value)} (from ${shortEnum(r.sourceScope, "CONFIG_SCOPE_") || "default"})`;
      } catch (error) {
        resolved.textContent = fieldErrors(resolveForm, error.fieldViolations).join("; ") || (error.fieldViolations.length ? "" : error.message);
      }
    } },
      el("label", {}, "Key", resolveKey),
      el("label", {}, "Tenant", resolveTenant, el("span", { class: "field-error", dataset: { field: "tenant_id" } })),
      el("label", {}, "Node", resolveNode, el("span", { class: "field-error", dataset: { field: "node_id" } })),
      el("button", { type: "submit" }, "Resolve"), resolved);
    if (can("ConfigService/ResolveConfig")) root.append(el("h2", {}, "Effective value"), resolveForm);

    // Setting a value: the server's field errors appear next to the field.
    let editor = null;
    const editRow = (c) => { if (editor) editor.fill(c); };
    if (can("ConfigService/SetConfig")) {
      editor = configEditor(keys, byKey, session, async () => { await loadValues(); });
      root.append(el("h2", {}, "Set a value"), editor.form);
    }
    await loadValues();
    return root;
  }

  function configEditor(keys, byKey, session, saved) {
    // A tenant admin sets TENANT-scope values only: offer just the keys that have that scope.
    const settable = keys.filter((k) => !session.tenantScoped || k.allowedScopes.includes("CONFIG_SCOPE_TENANT"));
    const key = el("select", { id: "set-key", name: "key" }, settable.map((k) => el("option", { value: k.key }, k.key)));
    const scope = el("select", { id: "set-scope" });
    const tenant = el("input", { id: "set-tenant", placeholder: "tenant ULID", size: 28, value: session.tenantScoped ? session.tenantId : "", disabled: session.tenantScoped });
    const node = el("input", { id: "set-node", placeholder: "node id", size: 16 });
    const value = el("input", { id: "set-value", size: 24, autocomplete: "off" });
    const description = el("input", { id: "set-description", size: 30 });
    const etag = el("input", { id: "set-etag", size: 6, placeholder: "new row" });
    const fillScopes = () => {
      const allowed = byKey[key.value].allowedScopes.filter((s) => !session.tenantScoped || s === "CONFIG_SCOPE_TENANT");
      scope.replaceChildren(...allowed.map((s) => el("option", { value: s }, scopeName(s))));
      value.placeholder = shortEnum(byKey[key.value].valueType, "CONFIG_VALUE_TYPE_").toLowerCase();
    };
    key.addEventListener("change", () => { fillScopes(); etag.value = ""; });
    fillScopes();
    const slot = (field) => el("span", { class: "field-error", dataset: { field } });
    const form = el("form", { class: "inline", id: "set-form", onsubmit: async (event) => {
      event.preventDefault();
      const spec = byKey[key.value];
      const type = shortEnum(spec.valueType, "CONFIG_VALUE_TYPE_");
      const raw = value.value.trim();
      fieldErrors(form, []);
      let typed;
      if (type === "INTEGER") {
        if (!/^-?\d+$/.test(raw)) { fieldErrors(form, [{ field: "value", description: "must be a whole number" }]); return; }
        typed = { intValue: raw };
      } else if (type === "BOOLEAN") {
        if (!["true", "false"].includes(raw)) { fieldErrors(form, [{ field: "value", description: "must be true or false" }]); return; }
        typed = { boolValue: raw === "true" };
      } else {
        typed = { stringValue: value.value };
      }
      const body = { key: key.value, scope: scope.value, tenantId: tenant.value.trim().toUpperCase(), nodeId: node.value.trim(), value: typed, description: description.value, etag: etag.value.trim() };
      try {
        const { config } = await api("ConfigService/SetConfig", body);
        etag.value = config.etag;
        notice(`Saved ${config.key} at ${scopeName(config.scope)}: ${valueText(config.value)} (etag ${config.etag}).`);
        await saved();
      } catch (error) {
        if (error.code === "ABORTED") {
          notice("Someone else changed this value since it was shown; your change was not applied. The list shows the current state.", "conflict");
          await saved();
        } else if (error.fieldViolations.length) {
          const rest = fieldErrors(form, error.fieldViolations);
          notice(rest.join("; "), rest.length ? "conflict" : "");
        } else {
          notice(error.message, "conflict");
        }
      }
    } },
      el("label", {}, "Key", key, slot("key")),
      el("label", {}, "Scope", scope, slot("scope")),
      el("label", {}, "Tenant", tenant, slot("tenant_id")),
      el("label", {}, "Node", node, slot("node_id")),
      el("label", {}, "Value", value, slot("value")),
      el("label", {}, "Description", description, slot("description")),
      el("label", {}, "Etag", etag, slot("etag")),
      el("button", { type: "submit", class: "primary", id: "set-submit" }, "Save"));
    const fill = (c) => {
      key.value = c.key; fillScopes(); scope.value = c.scope;
      if (!session.tenantScoped) tenant.value = c.tenantId || "";
      node.value = c.nodeId || ""; description.value = c.description || "";
      const v = c.value || {};
      value.value = v.intValue ?? (v.boolValue !== undefined ? String(v.boolValue) : v.stringValue ?? "");
      etag.value = c.etag; value.focus();
    };
    return { form, fill };
  }

  // ---- start ------------------------------------------------------------------------

  document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    if (await loadSession()) {
      document.getElementById("token").value = "";
      await route();
    }
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.session = null;
    showSignIn("");
  });
  window.addEventListener("hashchange", route);
  loadSession().then((ok) => { if (ok) route(); });
})();
