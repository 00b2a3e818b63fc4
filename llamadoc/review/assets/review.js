// llamadoc review: the queue, one document over its pages, edits checked as they are typed,
// and decisions. Plain JavaScript, no library and nothing from the network: every request goes
// to the page's own server, by a relative path (the page works at / and under /review/).
"use strict";
(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const HEARTBEAT_MS = 15000; // the server lets a hold go after 45 s without one
  const FIELD = "input[data-path], textarea[data-path]"; // a value's editor: a textarea where it has lines

  const state = {
    queue: [], reviewer: "", doc: null, edits: {}, readonly: false, session: session(),
    prefetched: new Map(), checking: 0, heartbeat: null, selected: null,
    deciding: false, // a decision on its way: a second click or key waits for it
    dirty: false, // edits or a note not yet decided
    drafts: new Map(), // document id -> {edits, note} left undecided when the person moved on
  };

  function session() {
    // One per browser tab, kept across reloads: the hold on a document is this tab's. A tab the
    // browser duplicated (or restored) copies sessionStorage too, so only a reload keeps it.
    const [navigation] = performance.getEntriesByType("navigation");
    let id = navigation && navigation.type === "reload" ? sessionStorage.getItem("llamadoc-review-session") : null;
    if (!id) {
      const bytes = new Uint8Array(12);
      crypto.getRandomValues(bytes);
      id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem("llamadoc-review-session", id);
    }
    return id;
  }

  async function api(path, body, keepalive = false) {
    const options = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), keepalive,
    };
    const response = await fetch(path, options);
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) {
      const err = new Error(data.error || response.statusText);
      err.status = response.status;
      throw err;
    }
    return data;
  }

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "for" || key === "role") {
        node.setAttribute(key, value);
      } else node[key] = value;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  };

  const shown = (value) => (value === null || value === undefined ? "" :
    typeof value === "object" ? JSON.stringify(value) : String(value));
  const label = (path) => path.replace(/\[(\d+)\]/g, (_, n) => ` ${Number(n) + 1}`)
    .split(".").map((p) => p.replace(/_/g, " ")).join(" › ");
  const checkName = (name) => name.split(":")[0].replace(/_/g, " ");

  // -- the queue ---------------------------------------------------------------------------------

  async function loadQueue() {
    const data = await api("api/queue");
    state.queue = data.items;
    state.reviewer = data.reviewer;
    $("#batch").textContent = data.out;
    const filter = $("#filter");
    for (const [reason, count] of Object.entries(data.reasons)) {
      if (count && !$(`option[value="reason:${reason}"]`, filter)) {
        filter.append(el("option", { value: `reason:${reason}`, text: `${reason} (${count})` }));
      }
    }
    $("#problems").replaceChildren(...data.problems.map((p) => el("li", { text: p })));
  }

  function visible() {
    const f = $("#filter").value;
    return state.queue.filter((item) =>
      f === "all" ? true :
      f === "needs" ? item.needs_review || item.reasons.length > 0 :
      f === "undecided" ? !item.decision :
      item.reasons.includes(f.slice("reason:".length)));
  }

  function renderQueue() {
    const current = state.doc && state.doc.id;
    $("#queue").replaceChildren(...visible().map((item) => el("li", {}, queueLink(item, current))));
    progress();
  }

  function queueLink(item, current) {
    const tags = item.reasons.map((r) => el("span", { className: "tag", text: r }));
    const decided = item.decision ? el("span", {
      className: `tag ${item.decision === "approved" ? "done" : "rejected"}`, text: `${item.decision} by ${item.by}`,
    }) : null;
    return el("a", { href: `#${item.id}`, id: `q-${item.id}`, "data-id": item.id,
      "aria-current": item.id === current ? "true" : null },
    el("span", { className: "name", text: item.name }), decided, ...tags);
  }

  // One row changed (a decision), or which one is current: no need to draw 2,000 rows again.
  function redrawItem(item) {
    const link = $(`#q-${item.id}`);
    if (link) link.replaceWith(queueLink(item, state.doc && state.doc.id));
    progress();
  }

  function markCurrent(id) {
    $$('#queue a[aria-current="true"]').forEach((link) => link.removeAttribute("aria-current"));
    const link = $(`#q-${id}`);
    if (link) {
      link.setAttribute("aria-current", "true");
      link.scrollIntoView({ block: "nearest" });
    }
  }

  function progress() {
    const done = state.queue.filter((item) => item.decision).length;
    $("#progress").textContent = `${done} of ${state.queue.length} reviewed`;
  }

  function step(delta) {
    const items = visible();
    if (!items.length) return;
    const at = items.findIndex((item) => state.doc && item.id === state.doc.id);
    const next = at < 0 ? 0 : Math.min(items.length - 1, Math.max(0, at + delta));
    go(items[next].id);
  }

  function go(id) {
    if (location.hash !== `#${id}`) location.hash = id; // hashchange opens it
    else open(id);
  }

  // -- one document ------------------------------------------------------------------------------

  async function open(id) {
    let doc = state.prefetched.get(id);
    state.prefetched.delete(id);
    const item = state.queue.find((i) => i.id === id);
    // The first page's image is asked for beside the document, not after it: the <img> drawn
    // from the document then finds it in the browser's cache, or on its way.
    if (!doc && item && item.pages) new Image().src = pageUrl(id, 1);
    try {
      doc = doc || await api(`api/documents/${id}`);
    } catch (err) {
      banner(err.message);
      return;
    }
    keepDraft();
    state.doc = doc;
    if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`); // a reload comes back here
    state.edits = {};
    state.selected = null;
    const decided = doc.decision && !doc.decision_problem ? doc.decision : null;
    if (decided) { // the approved values are the ones to show, and to keep when decided again
      for (const [path, change] of Object.entries(decided.changed)) state.edits[path] = shown(change.new);
    }
    const draft = state.drafts.get(id);
    state.dirty = Boolean(draft);
    if (draft) Object.assign(state.edits, draft.edits);
    renderDocument(doc);
    if (draft) {
      $("#note").value = draft.note;
      banner("Your edits to this document, not yet decided, are back.");
      recheck();
    }
    markCurrent(id);
    await hold(id);
    prefetch();
  }

  // What the person typed and did not decide stays with its document while they look at another.
  function keepDraft() {
    if (!state.doc) return;
    if (state.dirty) state.drafts.set(state.doc.id, { edits: { ...state.edits }, note: $("#note").value });
    else state.drafts.delete(state.doc.id);
  }

  async function hold(id) {
    state.readonly = false;
    try {
      await api(`api/documents/${id}/hold`, { session: state.session });
    } catch (err) {
      if (err.status === 423) {
        state.readonly = true;
        banner(`${err.message}: read only.`);
      } else banner(err.message);
    }
    $$("#form-pane input, #form-pane textarea, #approve, #reject").forEach((node) => {
      node.disabled = state.readonly || !state.doc || !state.doc.fields || state.deciding;
    });
    $("#note").disabled = state.readonly;
    $("#reject").disabled = state.readonly;
  }

  function prefetch() {
    const items = visible();
    const at = items.findIndex((item) => state.doc && item.id === state.doc.id);
    const next = items[at + 1];
    if (!next || state.prefetched.has(next.id)) return;
    api(`api/documents/${next.id}`).then((doc) => {
      state.prefetched.clear();
      state.prefetched.set(next.id, doc);
      if (doc.page_count && !doc.images) new Image().src = pageUrl(next.id, 1);
    }).catch(() => {});
  }

  const pageUrl = (id, n) => `api/documents/${id}/pages/${n}`;

  function banner(text) {
    $("#banner").textContent = text || "";
  }

  const docBanner = (doc) => [doc.decision_problem, doc.images, ...doc.errors].filter(Boolean).join(" · ");

  function renderDocument(doc) {
    $("#doc-title").textContent = doc.source.split(/[\\/#]/).pop();
    $("#doc-source").textContent = doc.source + (doc.embedded ? ` (read from its e-invoice ${doc.embedded})` : "");
    banner(docBanner(doc));
    $("#doc-reasons").replaceChildren(...doc.review.map((r) => el("li", { text: r })));
    renderPages(doc);
    renderFields(doc);
    renderChecks(doc.checks);
    renderDecision(doc);
    $("#note").value = doc.decision && !doc.decision_problem ? doc.decision.note : "";
  }

  function renderPages(doc) {
    const pane = $("#pages");
    if (doc.images || !doc.page_count) {
      pane.replaceChildren(el("p", { className: "no-pages", text: doc.images || "This document has no pages." }));
      return;
    }
    const name = doc.source.split(/[\\/#]/).pop();
    const figures = [];
    for (let n = 1; n <= doc.page_count; n++) {
      const img = el("img", { src: pageUrl(doc.id, n), alt: `Page ${n} of ${name}`, decoding: "async",
        loading: n === 1 ? "eager" : "lazy" });
      // A mark for benchmarks/review_speed.py: when a person first sees the document.
      if (n === 1) img.addEventListener("load", () => performance.mark("llamadoc:shown"), { once: true });
      const sheet = el("div", { className: "sheet", "data-page": n }, img);
      figures.push(el("figure", { className: "page" }, sheet, el("figcaption", { text: `Page ${n}` })));
    }
    pane.replaceChildren(...figures);
    for (const v of doc.values) {
      const ev = v.evidence;
      if (!ev.page || !ev.boxes || !ev.boxes.length || !ev.page_size || ev.page_size.length !== 2) continue;
      const sheet = $(`.sheet[data-page="${ev.page}"]`, pane);
      if (!sheet) continue;
      const [w, h] = ev.page_size;
      for (const [x0, y0, x1, y1] of ev.boxes) {
        const box = el("div", { className: `box${v.look.length ? " look" : ""}`, "data-path": v.path,
          title: `${label(v.path)}: ${shown(v.value)}`, "aria-hidden": "true" });
        box.style.left = `${(100 * x0) / w}%`;
        box.style.top = `${(100 * y0) / h}%`;
        box.style.width = `${(100 * (x1 - x0)) / w}%`;
        box.style.height = `${(100 * (y1 - y0)) / h}%`;
        box.addEventListener("click", () => focusField(v.path));
        sheet.append(box);
      }
    }
  }

  function checkList(checks) {
    return el("ul", { className: "checks" }, ...checks.map((c) =>
      el("li", { className: c.status, text: `${checkName(c.name)}: ${c.status}${c.detail ? ` (${c.detail})` : ""}` })));
  }

  function info(v, id) {
    const conf = typeof v.confidence === "number" ? el("span", { className: "conf", text: `confidence ${v.confidence}` })
      : null;
    const why = v.look.length ? el("span", { className: "look-why", text: v.look.join(", ") }) : null;
    const where = v.evidence.source === "none" ? el("span", { text: v.evidence.why_not || "no evidence" })
      : v.evidence.xml_path ? el("span", { text: `XML ${v.evidence.xml_path}` })
      : v.evidence.page ? el("span", { text: `page ${v.evidence.page} (${v.evidence.source})` }) : null;
    return el("div", { className: "info", id }, conf, why, where, checkList(v.checks));
  }

  function renderFields(doc) {
    const form = $("#fields");
    const items = $("#items");
    form.replaceChildren();
    items.replaceChildren();
    if (!doc.fields) {
      form.append(el("p", { text: "No fields were extracted from this document: reject it, or run it again." }));
      return;
    }
    if (!doc.values.length) {
      form.append(el("p", { text: "The model found none of the schema's fields in this document: approve it "
        + "empty, or reject it." }));
    }
    const rows = new Map(); // line item index -> {key: value}
    let n = 0;
    for (const v of doc.values) {
      const item = /^line_items\[(\d+)\]\.(.+)$/.exec(v.path);
      if (item) {
        const index = Number(item[1]);
        if (!rows.has(index)) rows.set(index, new Map());
        rows.get(index).set(item[2], v);
        continue;
      }
      const id = `f-${n++}`;
      const input = editor(v, { id, "aria-describedby": `${id}-info` });
      form.append(el("div", { className: `field${v.look.length ? " look" : ""}`, "data-path": v.path },
        el("label", { for: id, text: label(v.path) }), input, info(v, `${id}-info`)));
    }
    if (rows.size) items.append(lineItems(rows));
    for (const input of $$(FIELD)) {
      if (state.edits[input.dataset.path] !== undefined) mark(input.dataset.path, true);
    }
  }

  // An input, or a textarea for a value of several lines (an input would join them, and an
  // untouched address would come back as an edit).
  function editor(v, attrs) {
    const text = value(v);
    const lines = text.split("\n").length;
    return lines > 1 ? el("textarea", { ...attrs, value: text, rows: Math.min(lines, 6), "data-path": v.path,
      spellcheck: false }) : el("input", { ...attrs, type: "text", value: text, "data-path": v.path, spellcheck: false });
  }

  function value(v) {
    return state.edits[v.path] !== undefined ? state.edits[v.path] : shown(v.value);
  }

  function lineItems(rows) {
    const keys = [];
    for (const row of rows.values()) for (const key of row.keys()) if (!keys.includes(key)) keys.push(key);
    const head = el("tr", {}, el("th", { scope: "col", text: "#" }),
      ...keys.map((k) => el("th", { scope: "col", text: k.replace(/_/g, " ") })));
    const body = [...rows.entries()].sort((a, b) => a[0] - b[0]).map(([index, row]) =>
      el("tr", {}, el("th", { scope: "row", text: String(index + 1) }), ...keys.map((key) => {
        const v = row.get(key);
        if (!v) return el("td", {});
        const failed = v.checks.filter((c) => c.status === "fail");
        return el("td", { className: `cell${v.look.length ? " look" : ""}`, "data-path": v.path },
          editor(v, { "aria-label": `Line ${index + 1} ${key.replace(/_/g, " ")}`,
            title: [v.look.join(", "), ...failed.map((c) => c.detail)].filter(Boolean).join(" · ") || null }),
          failed.length ? checkList(failed) : null);
      })));
    return el("table", {}, el("caption", { text: "Line items" }), el("thead", {}, head), el("tbody", {}, ...body));
  }

  function renderChecks(checks) {
    $("#doc-checks").replaceChildren(...checks.map((c) =>
      el("li", { className: c.status, "data-name": c.name,
        text: `${checkName(c.name)}${c.name.includes(":") ? ` ${c.name.split(":")[1].replace(/_/g, " ")}` : ""}: `
          + `${c.status}${c.detail ? ` (${c.detail})` : ""}` })));
  }

  function renderDecision(doc) {
    const d = doc.decision;
    $("#decision").textContent = !d ? "Not decided yet." : doc.decision_problem ? "" :
      `${d.decision === "approved" ? "Approved" : "Rejected"} by ${d.by} at ${d.at}` +
      (Object.keys(d.changed).length ? `, ${Object.keys(d.changed).length} value(s) changed` : "") +
      (d.note ? `: ${d.note}` : "");
  }

  // -- fields: selection, edits and their checks --------------------------------------------------

  function select(path) {
    state.selected = path;
    $$(".box.selected, .field.selected, .cell.selected").forEach((node) => node.classList.remove("selected"));
    const holder = $(`.field[data-path="${CSS.escape(path)}"], .cell[data-path="${CSS.escape(path)}"]`);
    if (holder) {
      holder.classList.add("selected");
      holder.scrollIntoView({ block: "nearest" }); // with the pane's scroll-padding: above the decision bar
    }
    const boxes = $$(`.box[data-path="${CSS.escape(path)}"]`);
    boxes.forEach((box) => box.classList.add("selected"));
    if (boxes.length) boxes[0].scrollIntoView({ block: "center", inline: "nearest" });
  }

  function focusField(path) {
    const input = $(`input[data-path="${CSS.escape(path)}"], textarea[data-path="${CSS.escape(path)}"]`);
    if (input) {
      input.focus();
      input.select();
    }
  }

  function nextLook(from) {
    if (!state.doc) return;
    const inputs = $$(FIELD).filter((input) => input.closest(".look") && !input.disabled);
    if (!inputs.length) {
      // Not the Approve button: a second Enter would approve before the person chose to.
      $("#doc-title").focus();
      banner("Nothing left that needs a look: approve with a, or reject with r.");
      return;
    }
    const all = $$(FIELD);
    const at = from ? all.indexOf(from) : state.selected ?
      all.findIndex((input) => input.dataset.path === state.selected) : -1;
    const next = inputs.find((input) => all.indexOf(input) > at) || inputs[0];
    focusField(next.dataset.path);
  }

  function mark(path, edited) {
    const holder = $(`.field[data-path="${CSS.escape(path)}"], .cell[data-path="${CSS.escape(path)}"]`);
    if (holder) holder.classList.toggle("edited", edited);
  }

  let checkTimer = null;
  function edited(input) {
    const path = input.dataset.path;
    const original = state.doc.values.find((v) => v.path === path);
    if (original && input.value === shown(original.value)) delete state.edits[path];
    else state.edits[path] = input.value;
    state.dirty = true;
    mark(path, state.edits[path] !== undefined);
    clearTimeout(checkTimer);
    checkTimer = setTimeout(recheck, 120);
  }

  async function recheck() {
    const doc = state.doc;
    const sent = { ...state.edits };
    const ticket = ++state.checking;
    let result;
    try {
      result = await api(`api/documents/${doc.id}/check`, { values: sent });
    } catch (err) {
      banner(err.message);
      return;
    }
    if (ticket !== state.checking || doc !== state.doc) return; // a later edit's answer is coming
    for (const v of doc.values) {
      const holder = $(`.field[data-path="${CSS.escape(v.path)}"], .cell[data-path="${CSS.escape(v.path)}"]`);
      if (!holder) continue;
      const now = result.values[v.path];
      // An edited value is the person's: its own checks decide whether it still needs a look.
      const checks = now ? now.checks : v.checks;
      const look = now ? (checks.some((c) => c.status === "fail") ? ["failed check"] : []) : v.look;
      holder.classList.toggle("look", look.length > 0);
      $$(`.box[data-path="${CSS.escape(v.path)}"]`).forEach((box) => box.classList.toggle("look", look.length > 0));
      const old = $(".checks", holder);
      const fresh = checkList(holder.classList.contains("cell") ? checks.filter((c) => c.status === "fail") : checks);
      if (old) old.replaceWith(fresh);
      else holder.append(fresh);
      const why = $(".look-why", holder);
      if (why) why.textContent = look.join(", ");
    }
    renderChecks(result.checks.length ? result.checks : doc.checks);
  }

  // -- decisions ----------------------------------------------------------------------------------

  async function decide(decision) {
    const doc = state.doc;
    if (!doc || state.readonly || state.deciding || (decision === "approved" && !doc.fields)) return;
    performance.mark("llamadoc:decide");
    clearTimeout(checkTimer);
    let made;
    buttons(true);
    try {
      made = await api(`api/documents/${doc.id}/decision`, {
        session: state.session, decision, note: $("#note").value, values: state.edits,
        base: doc.decision ? doc.decision.revision : 0,
      });
    } catch (err) {
      buttons(false);
      if (err.status === 409 && doc === state.doc) { // decided elsewhere since: show theirs, keep ours
        state.prefetched.delete(doc.id);
        keepDraft();
        await open(doc.id);
        refreshQueue();
      }
      banner(err.message);
      return;
    }
    buttons(false);
    state.dirty = false;
    state.drafts.delete(doc.id);
    doc.decision = made.decision;
    doc.decision_problem = null;
    const item = state.queue.find((i) => i.id === doc.id);
    if (item) {
      item.decision = made.decision.decision;
      item.by = made.decision.by;
      redrawItem(item);
    }
    renderDecision(doc);
    const next = nextUndecided(doc.id);
    if (next) go(next.id);
    else $("#decision").textContent += " · every document is decided.";
    refreshQueue(); // what other reviewers decided meanwhile
  }

  function buttons(busy) {
    state.deciding = busy;
    $("#approve").disabled = busy || state.readonly || !state.doc || !state.doc.fields;
    $("#reject").disabled = busy || state.readonly;
  }

  function refreshQueue() {
    loadQueue().then(renderQueue).catch(() => {});
  }

  function nextUndecided(after) {
    const items = visible();
    const at = items.findIndex((item) => item.id === after);
    return items.slice(at + 1).find((item) => !item.decision) || items.slice(0, at).find((item) => !item.decision);
  }

  // -- keys ---------------------------------------------------------------------------------------

  function keys(event) {
    const target = event.target;
    const typing = target instanceof Element && target.matches("input, textarea, select");
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!event.repeat) decide("approved"); // a key held down decides once, not this and the next
      return;
    }
    if (typing) {
      if (event.key === "Escape") {
        event.preventDefault();
        target.blur();
        $("#doc-title").focus();
      } else if (event.key === "Enter" && target.matches("input[data-path]")) { // a textarea takes its Enter
        event.preventDefault();
        nextLook(target);
      }
      return;
    }
    if (event.altKey || event.ctrlKey || event.metaKey || $("#keys").open) return;
    const actions = {
      j: () => step(1), "]": () => step(1), k: () => step(-1), "[": () => step(-1),
      n: () => nextLook(null), a: () => decide("approved"), r: () => decide("rejected"),
      "?": () => $("#keys").showModal(), "/": () => $("#filter").focus(),
    };
    const action = actions[event.key];
    if (action) {
      event.preventDefault();
      if (!(event.repeat && (event.key === "a" || event.key === "r"))) action();
    }
  }

  // -- start --------------------------------------------------------------------------------------

  function start() {
    document.addEventListener("keydown", keys);
    $("#fields").addEventListener("submit", (e) => e.preventDefault());
    $("#form-pane").addEventListener("input", (e) => {
      if (e.target.matches(FIELD)) edited(e.target);
      else if (e.target.id === "note") state.dirty = true;
    });
    $("#form-pane").addEventListener("focusin", (e) => {
      if (e.target.matches(FIELD)) select(e.target.dataset.path);
    });
    $("#approve").addEventListener("click", () => decide("approved"));
    $("#reject").addEventListener("click", () => decide("rejected"));
    $("#keys-button").addEventListener("click", () => $("#keys").showModal());
    $("#filter").addEventListener("change", renderQueue);
    window.addEventListener("hashchange", () => open(location.hash.slice(1)));
    window.addEventListener("beforeunload", (event) => {
      keepDraft();
      if (state.drafts.size) event.preventDefault(); // the browser asks before edits not decided are lost
    });
    window.addEventListener("pagehide", () => {
      if (state.doc) api(`api/documents/${state.doc.id}/release`, { session: state.session }, true).catch(() => {});
    });
    state.heartbeat = setInterval(() => {
      if (!state.doc) return;
      const id = state.doc.id;
      const wasReadonly = state.readonly;
      api(`api/documents/${id}/hold`, { session: state.session }).then(() => {
        // The other page moved on: this one may decide now, on the document as it is now.
        if (wasReadonly && state.doc && state.doc.id === id) open(id);
      }).catch(() => {});
      if (wasReadonly) refreshQueue();
    }, HEARTBEAT_MS);
    loadQueue().then(() => {
      const wanted = location.hash.slice(1);
      const first = state.queue.find((item) => item.id === wanted) || visible()[0];
      // The first document is asked for before the list is drawn: a person looks at it first.
      const opened = first ? open(first.id) : null;
      renderQueue();
      if (!first) $("#doc-title").textContent = "This batch has no extracted documents to review.";
      return opened;
    }).catch((err) => {
      $("#progress").textContent = "";
      banner(err.message);
    });
  }

  start();
})();
