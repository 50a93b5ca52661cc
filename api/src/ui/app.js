// imagegen playground: plain JavaScript on the service's public API, no dependencies.
//
// Live status comes from the job's event stream (GET /api/v1/jobs/{id}/events, server-sent events) read with
// fetch() so the credentials can go in a header; when the stream is not there (404) or breaks, the page polls
// GET /api/v1/jobs/{id} instead (at most once a second, long-polled with ?wait=2; Retry-After honoured).
"use strict";
(() => {
  const KEY_STORAGE = "imagegen.apiKey";
  const PAGE = 12;
  const TERMINAL = new Set(["succeeded", "failed", "moderated", "canceled"]);
  const $ = (id) => document.getElementById(id);

  const state = {
    models: [],
    byId: new Map(),
    defaultModel: null,
    cursor: null,
    jobs: new Map(),        // job_id -> the last view seen, for the details dialog
    current: null,          // { id, abort: AbortController }
    eventsMissing: false,   // the events endpoint answered 404 once: poll from then on
    detailsJob: null,
  };

  // ---------- small helpers ----------

  /** An element with attributes and children (text is always text: nothing here is parsed as HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function apiKey() {
    try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  }

  function formatUsd(cost) {
    if (!cost || typeof cost.usd !== "number") return "";
    const usd = cost.usd;
    const text = usd === 0 ? "$0" : usd < 0.01 ? "$" + usd.toFixed(6).replace(/0+$/, "") : "$" + usd.toFixed(4);
    return (cost.estimated ? "≈ " : "") + text;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const secs = (Date.now() - d.getTime()) / 1000;
    if (secs < 60) return "just now";
    if (secs < 3600) return Math.floor(secs / 60) + " min ago";
    if (secs < 86400) return Math.floor(secs / 3600) + " h ago";
    return d.toLocaleDateString();
  }

  function extension(contentType) {
    return ({ "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" })[contentType] || "img";
  }

  const sleep = (ms, signal) => new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(t); reject(new DOMException("aborted", "AbortError")); }, { once: true });
  });

  // ---------- the API ----------

  class ApiError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body;
    }
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const key = apiKey();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "Cannot reach the service: " + e.message);
    }
    if (response.status === 204) return { data: null, response };
    let data = null;
    const text = await response.text();
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!response.ok) {
      const code = (data && data.error) || "http_" + response.status;
      let message = (data && data.message) || response.statusText || "Request failed";
      if (data && Array.isArray(data.details) && data.details.length) {
        message += " (" + data.details.map((d) => (d.field ? d.field + ": " : "") + d.message).join("; ") + ")";
      }
      const err = new ApiError(response.status, code, message, data);
      err.retryAfter = Number(response.headers.get("Retry-After")) || null;
      throw err;
    }
    return { data, response };
  }

  /** What to tell the person about a failed request; opens the key panel when credentials are the problem. */
  function explain(err) {
    if (err.name === "AbortError") return null;
    if (!(err instanceof ApiError)) return String(err.message || err);
    if (err.status === 401) {
      openKeyPanel();
      if (apiKey()) {
        return "The API key or token was refused (unknown, revoked or expired): paste a valid one under “API key”.";
      }
      return "This service needs an API key or token: paste one under “API key”.";
    }
    if (err.status === 403) return "Your key or token may not do this (403 forbidden): " + err.message;
    if (err.status === 429) {
      return "Too many requests: " + err.message + (err.retryAfter ? " Try again in " + err.retryAfter + " s." : "");
    }
    if (err.status === 402) return "Budget spent: " + err.message;
    if (err.status === 0) return err.message;
    return err.message + " (" + err.code + ")";
  }

  function notify(message, kind) {
    const box = $("notice");
    if (!message) { box.hidden = true; box.textContent = ""; return; }
    box.textContent = message;
    box.className = "notice" + (kind === "info" ? " info" : "");
    box.setAttribute("role", kind === "info" ? "status" : "alert");
    box.hidden = false;
  }

  // ---------- credentials ----------

  function openKeyPanel() {
    $("key-panel").hidden = false;
    $("key-button").setAttribute("aria-expanded", "true");
  }

  function updateKeyButton() {
    $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
  }

  function setupKey() {
    $("key-button").addEventListener("click", () => {
      const panel = $("key-panel");
      panel.hidden = !panel.hidden;
      $("key-button").setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) $("api-key").focus();
    });
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("api-key").value.trim().replace(/^Bearer\s+/i, "");
      try {
        if (value) sessionStorage.setItem(KEY_STORAGE, value); else sessionStorage.removeItem(KEY_STORAGE);
      } catch { /* storage refused: the key lasts until reload */ }
      $("api-key").value = "";
      $("key-panel").hidden = true;
      $("key-button").setAttribute("aria-expanded", "false");
      updateKeyButton();
      notify(value ? "Key saved for this tab." : "Key forgotten.", "info");
      loadGallery(true);
    });
    $("key-clear").addEventListener("click", () => {
      try { sessionStorage.removeItem(KEY_STORAGE); } catch { /* nothing kept */ }
      $("api-key").value = "";
      updateKeyButton();
      notify("Key forgotten.", "info");
      loadGallery(true);
    });
    updateKeyButton();
  }

  // ---------- models and their options ----------

  async function loadModels() {
    const { data } = await api("/api/v1/models");
    state.models = (data.models || []).filter((m) => m.status !== "retired");
    state.byId = new Map(state.models.map((m) => [m.id, m]));
    state.defaultModel = data.default_model;
    const select = $("model");
    select.replaceChildren();
    const groups = [["Current", (m) => m.status !== "deprecated"], ["Deprecated", (m) => m.status === "deprecated"]];
    for (const [label, keep] of groups) {
      const models = state.models.filter(keep);
      if (!models.length) continue;
      const group = el("optgroup", { label });
      for (const m of models) {
        group.append(el("option", { value: m.id, disabled: !m.available },
          m.name + (m.available ? "" : " (no provider configured)")));
      }
      select.append(group);
    }
    const preferred = state.byId.get(state.defaultModel);
    select.value = preferred && preferred.available ? preferred.id : (state.models.find((m) => m.available) || {}).id || "";
    renderOptions();
  }

  function selectField(name, label, values, selected, hint) {
    const id = "opt-" + name;
    const select = el("select", { id, name });
    for (const v of values) {
      const [value, text] = Array.isArray(v) ? v : [v, v];
      select.append(el("option", { value, selected: value === selected }, text));
    }
    return el("div", { class: "field" }, el("label", { for: id }, label), select,
      hint ? el("p", { class: "hint" }, hint) : null);
  }

  function renderOptions() {
    const model = state.byId.get($("model").value);
    const box = $("option-fields");
    box.replaceChildren();
    if (!model) { $("model-desc").textContent = ""; return; }
    const status = model.status === "deprecated" && model.retires_on ? " Deprecated: retires " + model.retires_on + "." : "";
    $("model-desc").textContent = (model.description || "") + (model.typical_generation_time ? " · " + model.typical_generation_time : "") + status;

    const sizes = (model.sizes && model.sizes.list) || [];
    const sizeChoices = sizes.map((s) => [s, s.replace("x", " × ")]);
    if (model.sizes && model.sizes.auto) sizeChoices.push(["auto", "auto"]);
    if (model.sizes && model.sizes.rules) sizeChoices.push(["custom", "custom…"]);
    const size = selectField("size", "Size", sizeChoices, (model.sizes && model.sizes.default) || sizes[0]);
    if (model.sizes && model.sizes.rules) {
      const r = model.sizes.rules;
      const custom = el("input", {
        id: "opt-size-custom", class: "custom-size", name: "size-custom", hidden: true, inputmode: "text",
        placeholder: "1280x720", pattern: "\\d+x\\d+", "aria-label": "Custom size, width x height",
        title: "WIDTHxHEIGHT" + (r.multiple_of ? ", multiples of " + r.multiple_of : "") + (r.max_side ? ", sides up to " + r.max_side : ""),
      });
      size.append(custom);
      size.querySelector("select").addEventListener("change", (e) => {
        custom.hidden = e.target.value !== "custom";
        if (!custom.hidden) custom.focus();
      });
    }
    box.append(size);

    if (model.qualities && model.qualities.length) {
      box.append(selectField("quality", "Quality", model.qualities, model.default_quality || model.qualities[0]));
    }
    if (model.styles && model.styles.length) box.append(selectField("style", "Style", model.styles, model.styles[0]));
    const max = model.max_images || 1;
    box.append(el("div", { class: "field" },
      el("label", { for: "opt-n" }, "Images"),
      el("input", { id: "opt-n", name: "n", type: "number", min: 1, max, value: 1, inputmode: "numeric" })));
    if (model.seed) {
      box.append(el("div", { class: "field" },
        el("label", { for: "opt-seed" }, "Seed"),
        el("input", { id: "opt-seed", name: "seed", type: "number", min: 0, max: 4294967295, placeholder: "random", inputmode: "numeric" })));
    }
    if (model.backgrounds && model.backgrounds.length) {
      box.append(selectField("background", "Background", model.backgrounds, model.backgrounds.includes("auto") ? "auto" : model.backgrounds[0]));
    }
    if (model.output_formats && model.output_formats.length > 1) {
      box.append(selectField("format", "Format", model.output_formats, model.output_formats[0]));
    }
    const servedBy = (model.served_by || []);
    if (servedBy.length > 1) {
      box.append(selectField("provider", "Provider", [["", "any"], ...servedBy], ""));
    }
  }

  function requestBody() {
    const body = { prompt: $("prompt").value.trim(), model: $("model").value };
    const value = (id) => { const e = $(id); return e && !e.hidden ? e.value.trim() : ""; };
    let size = value("opt-size");
    if (size === "custom") size = value("opt-size-custom").replace(/\s+/g, "").replace("×", "x");
    if (size) body.size = size;
    if (value("opt-quality")) body.quality = value("opt-quality");
    if (value("opt-style")) body.style = value("opt-style");
    if (value("opt-background")) body.background = value("opt-background");
    if (value("opt-format")) body.output_format = value("opt-format");
    if (value("opt-provider")) body.provider = value("opt-provider");
    const n = Number(value("opt-n") || 1);
    if (n !== 1) body.num_images = n;
    if (value("opt-seed") !== "") body.seed = Number(value("opt-seed"));
    return body;
  }

  function validate(body) {
    if (!body.prompt) return ["prompt", "Write a prompt first."];
    if (!body.model) return ["model", "Pick a model."];
    const model = state.byId.get(body.model);
    const n = body.num_images || 1;
    if (!Number.isInteger(n) || n < 1 || n > ((model && model.max_images) || 1)) {
      return ["opt-n", "Images: 1 to " + ((model && model.max_images) || 1) + "."];
    }
    if (body.size && body.size !== "auto" && !/^\d+x\d+$/.test(body.size)) {
      return ["opt-size-custom", "Size: WIDTHxHEIGHT, e.g. 1280x720."];
    }
    if (body.seed !== undefined && (!Number.isInteger(body.seed) || body.seed < 0)) return ["opt-seed", "Seed: a whole number."];
    return null;
  }

  // ---------- the current job ----------

  function logLine(text) {
    $("current-log").append(el("li", {}, text));
  }

  function setStatus(status, text, busy) {
    const line = $("current-status");
    line.replaceChildren(...[
      busy ? el("span", { class: "spinner", "aria-hidden": "true" }) : null,
      el("span", { class: "pill " + status, "data-status": status }, status),
      text || "",
    ].filter((c) => c !== null));
    line.dataset.status = status;
  }

  function describeRoute(route) {
    return route ? route.replace(":", " · ") : "";
  }

  function imageFigure(image, job) {
    const name = "imagegen-" + image.id + "." + extension(image.content_type);
    return el("figure", { "data-image-id": image.id },
      el("a", { href: image.url, target: "_blank", rel: "noopener" },
        el("img", { src: image.url, alt: job.prompt ? "Generated: " + job.prompt : "Generated image", width: image.width, height: image.height, loading: "lazy" })),
      el("figcaption", {},
        el("span", {}, image.width + "×" + image.height),
        image.cost ? el("span", {}, formatUsd(image.cost)) : null,
        el("a", { class: "button", href: image.url, download: name }, "Download")));
  }

  function showPartial(data) {
    if (!data || !data.b64_json) return;
    const box = $("current-images");
    const key = "partial-" + (data.index || 0);
    let img = box.querySelector("img[data-key='" + key + "']");
    if (!img) {
      img = el("img", { class: "partial", "data-key": key, alt: "Partial picture " + ((data.partial_image_index || 0) + 1) });
      box.append(el("figure", {}, img));
    }
    img.src = "data:image/" + (data.output_format || "png") + ";base64," + data.b64_json;
  }

  function showFinished(job) {
    state.jobs.set(job.job_id, job);
    const ok = job.status === "succeeded";
    const extra = ok
      ? " " + job.images.length + " image" + (job.images.length === 1 ? "" : "s") + (job.served_by ? " from " + describeRoute(job.served_by) : "")
      : " " + ((job.error && job.error.message) || job.cancel_reason || "");
    setStatus(job.status, extra, false);
    logLine(job.status + (job.generation_time_ms != null ? " in " + (job.generation_time_ms / 1000).toFixed(1) + " s" : ""));
    $("current-images").replaceChildren(...(job.images || []).map((i) => imageFigure(i, job)));
    $("current-cost").textContent = job.cost ? "Cost: " + formatUsd(job.cost) + (job.sandbox ? " (sandbox)" : "") : "";
    $("current-cancel").hidden = true;
    $("generate").disabled = false;
  }

  /** Applies one event of the stream (or one polled state) to the result panel. */
  function onEvent(type, data, seen) {
    switch (type) {
      case "status": {
        const text = data.status === "running"
          ? " on " + (data.provider || "a provider") + (data.route ? " (" + describeRoute(data.route) + ")" : "") + (data.attempt ? ", attempt " + data.attempt : "")
          : "";
        const line = data.status + text;
        if (seen.last !== line) { logLine(line); seen.last = line; }
        setStatus(data.status, text, true);
        break;
      }
      case "retrying": {
        const wait = data.retry_in_ms ? " retrying in " + (data.retry_in_ms / 1000).toFixed(1) + " s" : " retrying";
        logLine("attempt " + (data.attempt || "?") + " on " + describeRoute(data.route) + " failed: " + ((data.error && data.error.message) || "error") + ";" + wait);
        setStatus("running", " retrying" + (data.route ? " on " + describeRoute(data.route) : ""), true);
        break;
      }
      case "failover":
        logLine("failover: " + describeRoute(data.from) + " → " + describeRoute(data.to));
        setStatus("running", " failing over to " + describeRoute(data.to), true);
        break;
      case "partial_image":
        showPartial(data);
        break;
      default:
        break;
    }
  }

  /** Reads the job's event stream; the finished job, or null when the caller should poll instead. */
  async function followEvents(id, signal, seen) {
    if (state.eventsMissing) return null;
    let response;
    try {
      response = await fetch("/api/v1/jobs/" + encodeURIComponent(id) + "/events", {
        headers: headers({ Accept: "text/event-stream" }), signal, cache: "no-store",
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      return null;
    }
    if (response.status === 404 || response.status === 405) { state.eventsMissing = true; return null; }
    if (response.status === 401 || response.status === 403) {
      const data = await response.json().catch(() => null);
      throw new ApiError(response.status, (data && data.error) || "unauthorized", (data && data.message) || "Unauthorized", data);
    }
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !response.body || !type.startsWith("text/event-stream")) return null;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return null;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + (buffer.startsWith("\r\n\r\n", cut) ? 4 : 2));
          let event = "message";
          const data = [];
          for (const line of block.split(/\r\n|\n|\r/)) {
            if (!line || line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let v = colon < 0 ? "" : line.slice(colon + 1);
            if (v.startsWith(" ")) v = v.slice(1);
            if (field === "event") event = v;
            else if (field === "data") data.push(v);
          }
          if (!data.length) continue;
          let payload;
          try { payload = JSON.parse(data.join("\n")); } catch { continue; }
          if (TERMINAL.has(event) && payload && payload.job_id) {
            reader.cancel().catch(() => {});
            return payload;
          }
          onEvent(event, payload, seen);
        }
      }
    } catch (e) {
      if (e.name === "AbortError") throw e;
      return null; // the stream broke: poll
    }
  }

  /** Polls the job until it ends: at most once a second, each request held up to 2 s by the service (?wait=2) so
   *  the end shows at once; after a 429 or 503, as Retry-After says. */
  async function pollJob(id, signal, seen) {
    let failures = 0;
    for (;;) {
      const asked = Date.now();
      let job;
      try {
        ({ data: job } = await api("/api/v1/jobs/" + encodeURIComponent(id) + "?wait=2", { signal, cache: "no-store" }));
      } catch (e) {
        const transient = e instanceof ApiError && (e.status === 0 || e.status === 429 || e.status >= 500);
        if (e.name === "AbortError" || !transient || ++failures > 5) throw e;
        await sleep(Math.min((e.retryAfter || 2) * 1000, 60000), signal);
        continue;
      }
      failures = 0;
      if (TERMINAL.has(job.status)) return job;
      const route = job.status === "running" && job.provider ? { provider: job.provider, attempt: job.attempts || undefined } : {};
      onEvent("status", Object.assign({ status: job.status }, route), seen);
      await sleep(Math.max(0, 1000 - (Date.now() - asked)), signal);
    }
  }

  async function follow(job) {
    if (state.current) state.current.abort.abort();
    const abort = new AbortController();
    state.current = { id: job.job_id, abort };
    const seen = {};
    onEvent("status", { status: job.status }, seen);
    try {
      let done = TERMINAL.has(job.status) ? job : await followEvents(job.job_id, abort.signal, seen);
      if (!done) done = await pollJob(job.job_id, abort.signal, seen);
      if (state.current && state.current.id === job.job_id) {
        showFinished(done);
        upsertCard(done, true);
      }
    } catch (e) {
      const msg = explain(e);
      if (msg) { notify(msg); setStatus("failed", " " + msg, false); $("generate").disabled = false; }
    }
  }

  async function submit(e) {
    e.preventDefault();
    notify(null);
    const body = requestBody();
    const problem = validate(body);
    if (problem) {
      notify(problem[1]);
      const field = $(problem[0]);
      if (field) { field.hidden = false; field.focus(); }
      return;
    }
    $("generate").disabled = true;
    $("current-log").replaceChildren();
    $("current-images").replaceChildren();
    $("current-cost").textContent = "";
    setStatus("queued", " submitting…", true);
    let job;
    try {
      ({ data: job } = await api("/api/v1/jobs", {
        method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
      }));
    } catch (err) {
      const msg = explain(err);
      notify(msg);
      setStatus("failed", " " + msg, false);
      $("generate").disabled = false;
      return;
    }
    state.jobs.set(job.job_id, job);
    $("current").dataset.jobId = job.job_id;
    logLine("submitted job " + job.job_id + " (" + job.model + ")");
    if (job.translations && job.translations.length) job.translations.forEach(logLine);
    $("current-cancel").hidden = false;
    upsertCard(job, true);
    follow(job);
  }

  async function cancelJob(id) {
    try {
      await api("/api/v1/jobs/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
      notify("Job canceled.", "info");
    } catch (e) {
      notify(explain(e));
    }
  }

  // ---------- the gallery ----------

  function card(job) {
    const first = (job.images || [])[0];
    const thumb = first
      ? el("img", { class: "thumb", src: first.url, alt: "", loading: "lazy", width: first.width, height: first.height })
      : el("span", { class: "thumb empty", "aria-hidden": "true" }, job.status === "succeeded" ? "no images" : job.status);
    const label = job.prompt + ", " + job.status + ", " + job.model;
    return el("li", { "data-job-id": job.job_id, "data-status": job.status },
      el("button", { type: "button", class: "card", "aria-label": label, onclick: () => openDetails(job.job_id) },
        thumb,
        el("span", { class: "meta" },
          el("span", { class: "prompt" }, job.prompt),
          el("span", { class: "line" },
            el("span", { class: "pill " + job.status }, job.status),
            el("span", {}, job.model)),
          el("span", { class: "line" },
            el("span", {}, formatUsd(job.cost)),
            (job.images || []).length > 1 ? el("span", {}, job.images.length + " images") : null,
            job.sandbox ? el("span", {}, "sandbox") : null,
            el("span", {}, when(job.created_at))))));
  }

  /** Adds or refreshes a job's card; new ones go first (newest first). */
  function upsertCard(job, first) {
    state.jobs.set(job.job_id, job);
    const list = $("gallery");
    const old = list.querySelector("li[data-job-id='" + CSS.escape(job.job_id) + "']");
    if (hiddenFromGallery(job)) { if (old) old.remove(); emptyGallery(); return; }
    const node = card(job);
    if (old) old.replaceWith(node); else if (first) list.prepend(node); else list.append(node);
    emptyGallery();
  }

  /** A job whose pictures were all deleted has nothing left to show. */
  function hiddenFromGallery(job) {
    return job.status === "succeeded" && (!job.images || job.images.length === 0);
  }

  function emptyGallery(message) {
    const empty = $("gallery-empty");
    if (message) { empty.textContent = message; empty.hidden = false; return; }
    empty.hidden = $("gallery").children.length > 0;
    if (!empty.hidden) empty.textContent = "No jobs yet: generate something.";
  }

  async function loadGallery(reset) {
    if (reset) { state.cursor = null; $("gallery").replaceChildren(); }
    const query = "?limit=" + PAGE + (state.cursor ? "&cursor=" + encodeURIComponent(state.cursor) : "");
    try {
      const { data } = await api("/api/v1/jobs" + query);
      for (const job of data.jobs || []) upsertCard(job, false);
      state.cursor = data.next_cursor || null;
      $("more").hidden = !state.cursor;
      emptyGallery();
    } catch (e) {
      const msg = explain(e);
      if (msg) {
        notify(msg);
        emptyGallery(e instanceof ApiError && e.status === 401 ? "Your jobs appear here once the service accepts your key." : msg);
      }
      $("more").hidden = true;
    }
  }

  // ---------- details ----------

  function fact(name, value) {
    return value === undefined || value === null || value === "" ? [] : [el("dt", {}, name), el("dd", {}, value)];
  }

  function renderDetails(job) {
    state.detailsJob = job;
    $("details-title").textContent = job.prompt;
    const body = $("details-body");
    body.replaceChildren(
      el("p", {}, el("span", { class: "pill " + job.status, id: "details-status" }, job.status), job.sandbox ? " sandbox" : ""),
      el("dl", { class: "facts" },
        fact("Job", job.job_id),
        fact("Model", job.model + (job.requested_model ? " (asked: " + job.requested_model + ")" : "")),
        fact("Served by", job.served_by),
        fact("Size", job.size),
        fact("Quality", job.quality),
        fact("Images", String(job.num_images)),
        fact("Seed", job.seed),
        fact("Cost", formatUsd(job.cost)),
        fact("Time", job.generation_time_ms != null ? (job.generation_time_ms / 1000).toFixed(1) + " s" : ""),
        fact("Created", job.created_at ? new Date(job.created_at).toLocaleString() : ""),
        fact("Error", job.error ? job.error.code + ": " + job.error.message : ""),
        fact("Changes", (job.translations || []).join("; "))),
      el("div", { class: "images" }, (job.images || []).map((i) => imageFigure(i, job))));
    $("details-cancel").hidden = TERMINAL.has(job.status);
    $("details-delete").hidden = !(job.images && job.images.length);
  }

  async function openDetails(id) {
    const known = state.jobs.get(id);
    if (known) renderDetails(known);
    const dialog = $("details");
    if (!dialog.open) dialog.showModal();
    try {
      const { data } = await api("/api/v1/jobs/" + encodeURIComponent(id), { cache: "no-store" });
      state.jobs.set(id, data);
      if (dialog.open && state.detailsJob && state.detailsJob.job_id === id) renderDetails(data);
    } catch (e) {
      const msg = explain(e);
      if (msg) notify(msg);
    }
  }

  async function deleteImages() {
    const job = state.detailsJob;
    if (!job || !job.images || !job.images.length) return;
    const n = job.images.length;
    if (!window.confirm("Delete " + (n === 1 ? "this image" : "these " + n + " images") + "? This cannot be undone.")) return;
    $("details-delete").disabled = true;
    try {
      for (const image of job.images) {
        try {
          await api("/api/v1/images/" + encodeURIComponent(image.id), { method: "DELETE" });
        } catch (e) {
          if (!(e instanceof ApiError && e.status === 404)) throw e;
        }
      }
      const after = Object.assign({}, job, { images: [] });
      upsertCard(after, false);
      $("details").close();
      notify((n === 1 ? "Image" : n + " images") + " deleted.", "info");
      if ($("current").dataset.jobId === job.job_id) $("current-images").replaceChildren();
    } catch (e) {
      notify(explain(e));
    } finally {
      $("details-delete").disabled = false;
    }
  }

  // ---------- start ----------

  async function loadProviders() {
    try {
      const { data } = await api("/api/v1/providers");
      const sandboxed = (data.providers || []).filter((p) => p.sandbox).map((p) => p.name || p.id);
      const badge = $("sandbox-badge");
      badge.hidden = sandboxed.length === 0;
      badge.title = "Sandbox: the built-in emulator draws the pictures for " + sandboxed.join(", ") + " (no cost, not the real models)";
      badge.setAttribute("aria-label", badge.title);
    } catch { /* the badge stays hidden */ }
  }

  function start() {
    setupKey();
    $("model").addEventListener("change", renderOptions);
    $("generate-form").addEventListener("submit", submit);
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("generate-form").requestSubmit(); }
    });
    $("current-cancel").addEventListener("click", () => { if (state.current) cancelJob(state.current.id); });
    $("refresh").addEventListener("click", () => loadGallery(true));
    $("more").addEventListener("click", () => loadGallery(false));
    $("details-close").addEventListener("click", () => $("details").close());
    $("details").addEventListener("click", (e) => { if (e.target === $("details")) $("details").close(); });
    $("details-cancel").addEventListener("click", async () => {
      if (!state.detailsJob) return;
      await cancelJob(state.detailsJob.job_id);
      openDetails(state.detailsJob.job_id);
      loadGallery(true);
    });
    $("details-delete").addEventListener("click", deleteImages);
    loadModels().catch((e) => notify("Cannot load the models: " + (explain(e) || e)));
    loadProviders();
    loadGallery(true);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
