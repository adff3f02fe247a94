// GP Rollout Control status page. Reads the coordinator's JSON (/api/...), protobuf JSON as
// the gRPC API answers it, and renders it with DOM calls only (text is never parsed as HTML).
// Live: /events says "changed" on every change of the coordinator's state, and the view is
// read again at least every 5 s (contact ages, STALE suppliers).
"use strict";

const REFRESH_MS = 5000;
// A read that has not answered by then has failed: the page says so rather than stay "Live".
const READ_TIMEOUT_MS = 10000;

// Each view: its heading, path, what it renders on every refresh, and controls made once (so a
// refresh never takes the focus or a half-typed search away).
const VIEWS = {
  national: { title: "National picture", path: "/", render: national },
  commands: { title: "Commands", path: "/commands", render: commands },
  practices: { title: "Practice search", path: "/practices", render: practices, controls: searchForm },
  audit: { title: "Audit", path: "/audit", render: audit },
};

function currentView() {
  for (const [key, v] of Object.entries(VIEWS)) {
    if (location.pathname === v.path) return key;
  }
  return "national";
}

// ---- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function table(caption, headers, rows, numeric) {
  const num = new Set(numeric || []);
  return el("table", {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { scope: "col", class: num.has(i) ? "num" : null }, h)))),
    el("tbody", {}, rows.length
      ? rows.map((r) => (r instanceof Node ? r : el("tr", {}, r.map((c, i) => el("td", { class: num.has(i) ? "num" : null }, c)))))
      : el("tr", {}, el("td", { colspan: headers.length }, "None."))));
}

function short(name) {
  return (name || "").split("/").pop();
}

function words(enumName, prefix) {
  return (enumName || "").replace(prefix, "").replace(/_/g, " ").toLowerCase();
}

function tag(text, kind) {
  return el("span", { class: "tag " + kind }, text);
}

function when(ts) {
  if (!ts) return "—";
  const d = new Date(ts);
  return el("time", { datetime: ts }, d.toLocaleString("en-GB"));
}

function age(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(ts).getTime()) / 1000));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function int(v) {
  return Number(v || 0);
}

// ---- Fetching and liveness ---------------------------------------------------------------

class Refused extends Error {}

async function getJson(path) {
  const response = await fetch(path, {
    headers: { Accept: "application/json" },
    cache: "no-store",
    signal: AbortSignal.timeout(READ_TIMEOUT_MS),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = new Refused(body.message || response.statusText);
    e.reason = body.reason;
    e.status = response.status;
    throw e;
  }
  return body;
}

let inFlight = false;
let again = false;
// Set when the coordinator refused the view to this identity: asking again would only be
// refused (and audited) again, until the page is reloaded.
let refusedForGood = false;

async function refresh() {
  if (refusedForGood) return;
  if (inFlight) {
    again = true;
    return;
  }
  inFlight = true;
  const key = currentView();
  const view = VIEWS[key];
  const target = document.getElementById("view");
  const problem = document.getElementById("problem");
  try {
    const content = await view.render();
    target.replaceChildren(...[content].flat());
    problem.replaceChildren();
    if (stream && stream.readyState === EventSource.OPEN) live();
    const updated = document.getElementById("updated");
    updated.textContent = "Last updated " + new Date().toLocaleTimeString("en-GB");
    document.body.dataset.updates = String(int(document.body.dataset.updates) + 1);
  } catch (e) {
    const text = e instanceof Refused
      ? "The coordinator refused: " + e.message + (e.reason ? " (" + e.reason + ")" : "")
      : "Could not read the coordinator: " + e.message + ". The figures below may be out of date.";
    // The last figures stay, under the problem; the same problem again is not announced again.
    if (problem.textContent !== text) problem.replaceChildren(el("p", { class: "error", role: "alert" }, text));
    const status = document.getElementById("connection");
    status.textContent = "Not answering: figures may be out of date";
    status.className = "lost";
    if (e instanceof Refused && (e.status === 401 || e.status === 403)) {
      refusedForGood = true;
      target.replaceChildren();
    }
  } finally {
    inFlight = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

// The open event stream, if any.
let stream = null;

function live() {
  const status = document.getElementById("connection");
  status.textContent = "Live";
  status.className = "";
}

function connect() {
  const status = document.getElementById("connection");
  const events = new EventSource("/events");
  stream = events;
  events.addEventListener("open", live);
  events.addEventListener("changed", () => {
    document.body.dataset.events = String(int(document.body.dataset.events) + 1);
    refresh();
  });
  events.addEventListener("error", () => {
    status.textContent = "Reconnecting… figures may be out of date";
    status.className = "lost";
    // The browser retries a dropped stream by itself, but not one refused with an HTTP
    // error (too many open, a restart mid-request): open a new one after a pause.
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  });
}

// ---- National picture --------------------------------------------------------------------

function stateTag(state) {
  const w = words(state, "STATE_");
  return tag(w.toUpperCase(), state === "STATE_SYNCED" ? "good" : state === "STATE_PENDING" ? "warn" : "bad");
}

async function national() {
  const data = await getJson("/api/national");
  const suppliers = data.suppliers.suppliers || [];
  const out = [];
  out.push(el("h2", {}, "Suppliers"));
  out.push(table("Each supplier's synchronisation with the coordinator",
    ["Supplier", "State", "Applied sequence", "Target sequence", "Lag (commands)", "Last contact", "Halts not applied", "Last error"],
    suppliers.map((s) => [
      short(s.name), stateTag(s.state), int(s.appliedSequence), int(s.targetSequence),
      Math.max(0, int(s.targetSequence) - int(s.appliedSequence)),
      el("span", {}, age(s.lastContactTime), el("br"), el("small", {}, when(s.lastContactTime))),
      int(s.unappliedHaltCount), s.lastError || s.fault || s.divergence || "",
    ]), [2, 3, 4, 6]));
  const features = (data.features || []).map((f) => f.name);
  for (const feature of features) {
    out.push(el("h2", {}, "Feature " + short(feature)));
    out.push(table("Practices at each supplier by answer: " + short(feature) + " (as each supplier last counted them)",
      ["Supplier", "Practices", "Enabled", "Halted", "Opted out", "Not live", "Other disabled", "Unknown", "Counted"],
      suppliers.map((s) => {
        const c = (s.featureCounts || []).find((x) => x.feature === feature) || {};
        const behind = int(s.countsSequence) < int(s.appliedSequence);
        const counted = el("span", {}, "at sequence " + int(s.countsSequence) + ", " + age(s.countsTime),
          behind ? el("span", {}, " ", tag("OUT OF DATE", "warn")) : "");
        return [short(s.name), int(c.practices), int(c.enabled), int(c.halted), int(c.optedOut), int(c.notLive), int(c.otherDisabled), int(c.unknown), counted];
      }), [1, 2, 3, 4, 5, 6, 7]));
    const t = (data.tables || []).find((x) => x.feature === feature);
    const rows = t ? t.rows : [];
    out.push(table("Halted practices by region and ICB: " + short(feature) + " (halts in force at the coordinator)",
      ["Region", "ICB", "Active practices", "Halted", "Halts in force"],
      rows.map((r) => [r.region, r.icb, r.practices, r.halted,
        r.haltCount ? el("span", {}, r.halts.map(short).join(", "), r.haltCount > r.halts.length ? " and " + (r.haltCount - r.halts.length) + " more" : "") : "none",
      ]), [2, 3]));
  }
  return out;
}

// ---- Commands ----------------------------------------------------------------------------

function action(c) {
  if (c.halt) return "Halt";
  if (c.resume) return "Resume";
  if (c.goLive) return "Go-live";
  if (c.createFeature) return "Create feature";
  return "—";
}

function scope(c) {
  const s = (c.halt || c.goLive || {}).scope;
  if (!s) return c.resume ? "lifts " + (c.resume.halts || []).map(short).join(", ") : "every supplier";
  if (s.national) return "national";
  if (s.supplier) return "supplier " + s.supplier;
  if (s.region) return "region " + s.region;
  if (s.icb) return "ICB " + s.icb;
  if (s.subIcb) return "sub-ICB location " + s.subIcb;
  if (s.practices) {
    const p = s.practices.practices || [];
    return p.length + " practice" + (p.length === 1 ? "" : "s") + (p.length ? " (" + p.slice(0, 5).join(", ") + (p.length > 5 ? ", …" : "") + ")" : "");
  }
  return "—";
}

function deliveries(c, verified) {
  const list = c.deliveries || [];
  if (!list.length) return "—";
  return el("ul", { class: "plain" }, list.map((d) => {
    const v = (verified || []).find((x) => x.supplier === d.supplier);
    return el("li", {},
      el("strong", {}, short(d.supplier)), " ", words(d.state, "STATE_"),
      d.rejectionReason ? " (" + d.rejectionReason + ")" : "",
      el("br"),
      el("small", {},
        "issued ", when(c.createTime),
        c.approveTime ? el("span", {}, "; approved ", when(c.approveTime)) : "",
        c.sequenceTime ? el("span", {}, "; sequenced ", when(c.sequenceTime)) : "",
        d.applyTime ? el("span", {}, "; applied ", when(d.applyTime)) : "",
        d.acknowledgeTime ? el("span", {}, "; acknowledged ", when(d.acknowledgeTime)) : "",
        v ? "; verified " + v.seconds.toFixed(1) + " s after issue" : ""));
  }));
}

async function commands() {
  const params = new URLSearchParams(location.search);
  const token = params.get("page_token") || "";
  const data = await getJson("/api/commands?page_token=" + encodeURIComponent(token));
  const list = data.commands.commands || [];
  const row = (c, verified) => {
    const pending = c.state === "STATE_PENDING_APPROVAL";
    return el("tr", { class: pending ? "pending-approval" : null },
      el("td", {}, short(c.name), el("br"), el("small", {}, c.sequence ? "sequence " + c.sequence : "not sequenced")),
      el("td", {}, action(c), el("br"), el("small", {}, short(c.feature))),
      el("td", {}, pending ? tag("WAITING FOR APPROVAL", "warn") : words(c.state, "STATE_")),
      el("td", {}, c.requester || "—"),
      el("td", {}, (c.approvals || []).map((a) => a.approver).join(", ") || (pending ? int(c.approvalsRequired) + " needed" : "—")),
      el("td", {}, scope(c), el("br"), el("small", {}, c.reason || "")),
      el("td", { class: "num" }, c.impact ? int(c.impact.practices) : "—"),
      el("td", {}, deliveries(c, verified)));
  };
  const headers = ["Command", "Action", "State", "Requester", "Approvers", "Scope and reason", "Practices", "Delivery"];
  const pending = data.pending.commands || [];
  const out = [];
  if (pending.length) {
    out.push(el("h2", {}, "Waiting for approval"));
    out.push(table("Commands waiting for a second person's approval, newest first", headers, pending.map((c) => row(c, [])), [6]));
    out.push(el("h2", {}, "Every command"));
  }
  out.push(table("Commands, newest first; those waiting for approval are marked", headers, list.map((c, i) => row(c, data.verified[i])), [6]));
  if (data.commands.nextPageToken) {
    out.push(el("p", {}, el("a", { href: "/commands?page_token=" + encodeURIComponent(data.commands.nextPageToken) }, "Older commands")));
  }
  if (token) out.push(el("p", {}, el("a", { href: "/commands" }, "Newest commands")));
  return out;
}

// ---- Practice search ---------------------------------------------------------------------

function searchForm() {
  const q = new URLSearchParams(location.search).get("q") || "";
  return el("form", { class: "search", method: "get", action: "/practices", role: "search" },
    el("div", {},
      el("label", { for: "q" }, "ODS code or practice name"),
      el("input", { type: "search", id: "q", name: "q", value: q, required: true, maxlength: "100", autocomplete: "off" })),
    el("button", { type: "submit" }, "Search"));
}

function rules(answer) {
  const list = answer.rules || [];
  return table("The rules in force for this practice; the deciding rule is marked",
    ["Deciding", "Kind", "Status", "Command", "Issued by", "Reason"],
    list.map((r) => el("tr", { class: r.deciding ? "deciding" : null },
      el("td", {}, r.deciding ? "Deciding rule" : ""),
      el("td", {}, words(r.kind, "KIND_")),
      el("td", {}, words(r.status, "STATUS_")),
      el("td", {}, short(r.command) || "—", r.sequence ? el("small", {}, " (sequence " + r.sequence + ")") : ""),
      el("td", {}, r.issuedBy || "—"),
      el("td", {}, r.reason || ""))));
}

async function practices() {
  const q = new URLSearchParams(location.search).get("q") || "";
  const out = [];
  if (!q) return el("p", { class: "hint" }, "Give an ODS code (for example L56296) or part of a practice's name.");
  const data = await getJson("/api/practices?q=" + encodeURIComponent(q));
  if (data.matches) {
    out.push(table("Practices whose code starts with, or whose name contains, “" + q + "” (at most 20)",
      ["ODS code", "Name", "Supplier", "ICB", "Active"],
      data.matches.map((p) => [el("a", { href: "/practices?q=" + encodeURIComponent(p.ods) }, p.ods), p.name, short(p.supplier), p.icb, p.active ? "yes" : "no"])));
    return out;
  }
  const p = data.practice;
  out.push(el("h2", {}, p.name + " (" + p.ods + ")"));
  out.push(el("p", {}, "Supplier " + short(p.supplier) + ", region " + p.region + ", ICB " + p.icb + ", sub-ICB location " + p.subIcb + (p.active ? "" : ", not active")));
  for (const a of data.answers) {
    out.push(el("h3", {}, "Feature " + short(a.feature)));
    if (a.error) {
      out.push(el("p", { class: "error" }, "Its supplier's answer could not be read: " + a.error));
      continue;
    }
    const ans = a.answer;
    out.push(el("p", {}, tag(words(ans.state, "STATE_").toUpperCase(), ans.state === "STATE_ENABLED" ? "good" : "bad"),
      " ", ans.explanation || words(ans.reason, "REASON_")));
    out.push(rules(ans));
    if (int(ans.omittedRules)) {
      out.push(el("p", { class: "hint" }, int(ans.omittedRules) + " older rule" + (int(ans.omittedRules) === 1 ? "" : "s") +
        " in force not listed (an answer lists at most 16: the deciding one, then the newest); `rolloutctl practice show` lists the same."));
    }
  }
  const optOuts = data.optOuts.optOuts || [];
  out.push(table("Opt-outs of this practice (the national register, withdrawn ones included)",
    ["Feature", "Reason", "Source", "Recorded by", "Updated", "Withdrawn"],
    optOuts.map((o) => [short(o.name.replace(/\/optOut$/, "")), o.reason, o.source, o.recordedBy || "—", when(o.updateTime), o.withdrawn ? "yes" : "no"])));
  return out;
}

// ---- Audit -------------------------------------------------------------------------------

async function audit() {
  const data = await getJson("/api/audit");
  const out = [];
  const chain = data.broken
    ? el("p", { class: "chain error", role: "alert" }, "The audit chain is BROKEN at event " + data.broken.sequence + ": " + data.broken.problem)
    : el("p", { class: "chain" }, "Audit chain checked from event 1 to " + data.verifiedThrough + " of " + data.head +
        " (each event once, by this coordinator since it started)" +
        (int(data.verifiedThrough) < int(data.head) ? "; checking continues" : ": intact"));
  out.push(chain);
  out.push(table("Recent audit events, newest first",
    ["Event", "Time", "Identity", "Action", "Target", "Outcome", "Reason"],
    (data.events || []).map((e) => [e.sequence, when(e.eventTime), e.identity, short(e.action), e.target || "—",
      words(e.outcome, "OUTCOME_"), e.reason || ""]), [0]));
  return out;
}

// ---- Start -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const key = currentView();
  document.getElementById("title").textContent = VIEWS[key].title;
  document.title = VIEWS[key].title + ": GP Rollout Control";
  if (VIEWS[key].controls) document.getElementById("controls").replaceChildren(VIEWS[key].controls());
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === key) a.setAttribute("aria-current", "page");
  }
  connect();
  refresh();
  setInterval(refresh, REFRESH_MS);
});
