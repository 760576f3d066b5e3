// Operator pages (/ops, /ops/cabinets/<id>, /ops/review): live refresh and actions.
//
// Live refresh: the page listens to /api/events (server-sent events of the operator's
// cabinets: sale, alarm, status) and, at most once every 3 s, fetches itself again and
// swaps the elements marked data-live (the edit forms are not swapped, so nothing typed
// is lost). Without events it polls every 30 s.
//
// Actions: buttons with data-post="<url>" POST {} and report in the element named by
// data-status; forms with data-form="prices" | "planogram" | "refund" send JSON to
// data-url. Amounts are typed in yuan ("6.90") and sent in fen (690). An error that
// names a field marks the matching input (data-field).
(function () {
  "use strict";
  const page = document.querySelector("[data-ops-page]");
  if (!page) return;
  const kind = page.dataset.opsPage;
  const cabinet = page.dataset.cabinet || null;

  // ------------------------------------------------------------ live refresh

  const GAP_MS = 3000;
  const POLL_MS = 30000;
  let last = 0;
  let timer = null;
  let running = false;

  function typing(el) {
    const a = document.activeElement;
    return a && el.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName);
  }

  async function refresh() {
    if (running) { schedule(); return; }
    running = true;
    last = Date.now();
    try {
      const resp = await fetch(location.pathname + location.search, {
        headers: { Accept: "text/html" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      document.querySelectorAll("[data-live]").forEach((el) => {
        if (typing(el)) return;
        const fresh = doc.querySelector('[data-live="' + el.dataset.live + '"]');
        if (fresh) el.replaceWith(document.importNode(fresh, true));
      });
    } catch (e) {
      // offline for a moment: the next event or poll tries again
    } finally {
      running = false;
    }
  }

  function schedule() {
    if (timer) return;
    const wait = Math.max(0, last + GAP_MS - Date.now());
    timer = setTimeout(() => { timer = null; refresh(); }, wait);
  }

  function onEvent(ev) {
    let data = null;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    if (!data || typeof data !== "object") return;
    if (cabinet && data.cabinet_id && data.cabinet_id !== cabinet) return;
    if (kind === "review" && data.type !== "sale") return;
    schedule();
  }

  let poller = null;
  function poll() { if (!poller) poller = setInterval(schedule, POLL_MS); }

  if (window.EventSource) {
    const es = new EventSource("/api/events");
    es.onmessage = onEvent;
    ["sale", "alarm", "status"].forEach((t) => es.addEventListener(t, onEvent));
    es.onopen = () => { if (poller) { clearInterval(poller); poller = null; } };
    es.onerror = () => { poll(); };
  } else {
    poll();
  }

  // ------------------------------------------------------------ helpers

  function statusEl(el) {
    const id = el.dataset.status;
    if (id) return document.getElementById(id);
    const form = el.closest("form");
    return form ? form.querySelector("[data-role=status]") : null;
  }

  function show(el, text, cls) {
    if (!el) return;
    el.textContent = text;
    el.className = el.className.replace(/\b(ok|error|warn)\b/g, "").trim() + (cls ? " " + cls : "");
  }

  function errorText(r) {
    const b = r.body || {};
    const msg = b.message || "error " + r.status;
    return b.field ? b.field + ": " + msg : msg;
  }

  // "6.9" -> 690; anything else -> NaN (never a float rounding surprise)
  function toFen(text) {
    const s = String(text).trim().replace(/^¥/, "");
    const m = /^(\d{1,7})(?:\.(\d{1,2}))?$/.exec(s);
    if (!m) return NaN;
    return parseInt(m[1], 10) * 100 + parseInt((m[2] || "0").padEnd(2, "0"), 10);
  }

  function clearMarks(form) {
    form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
  }

  function mark(input) {
    if (!input) return;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }

  // ------------------------------------------------------------ buttons

  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-post]");
    if (!btn) return;
    ev.preventDefault();
    const out = statusEl(btn);
    btn.disabled = true;
    show(out, "Sending…", "warn");
    const r = await fb.post(btn.dataset.post, {});
    btn.disabled = false;
    btn.blur();
    if (r.ok) {
      show(out, btn.dataset.done || "Done.", "ok");
      schedule();
    } else {
      show(out, errorText(r), "error");
    }
  });

  // ------------------------------------------------------------ forms

  function pricesBody(form) {
    const prices = {};
    for (const input of form.querySelectorAll("input[data-lane]")) {
      if (input.value.trim() === input.defaultValue.trim()) continue;
      const fen = toFen(input.value);
      if (!(fen >= 1)) return { bad: input, message: "a price in yuan, like 6.90" };
      prices[input.dataset.lane] = fen;
    }
    if (!Object.keys(prices).length) return { none: true };
    return { body: { prices } };
  }

  function planogramBody(form) {
    const lanes = [];
    const rows = [];
    for (const row of form.querySelectorAll("tr[data-lane]")) {
      const inputs = row.querySelectorAll("input[data-key]");
      const changed = Array.from(inputs).some((i) => i.value.trim() !== i.defaultValue.trim());
      if (!changed) continue;
      const entry = { lane: parseInt(row.dataset.lane, 10) };
      for (const input of inputs) {
        const key = input.dataset.key;
        if (key === "price_fen") {
          const fen = toFen(input.value);
          if (!(fen >= 1)) return { bad: input, message: "a price in yuan, like 6.90" };
          entry.price_fen = fen;
        } else {
          entry[key] = input.value.trim();
        }
      }
      lanes.push(entry);
      rows.push(row);
    }
    if (!lanes.length) return { none: true };
    return { body: { lanes }, rows };
  }

  function refundBody(form) {
    const amount = form.querySelector("input[name=amount]");
    const note = form.querySelector("input[name=note]");
    const fen = toFen(amount.value);
    if (!(fen >= 1)) return { bad: amount, message: "an amount in yuan, like 3.80" };
    return { body: { amount_fen: fen, note: note ? note.value.trim() : "" } };
  }

  function fieldInput(form, field, built) {
    let input = form.querySelector('[data-field="' + CSS.escape(field) + '"]');
    if (input) return input;
    const m = /^lanes\[(\d+)\]\.(\w+)$/.exec(field);
    if (m && built.rows && built.rows[+m[1]]) {
      return built.rows[+m[1]].querySelector('input[data-key="' + m[2] + '"]');
    }
    return null;
  }

  const BUILDERS = { prices: pricesBody, planogram: planogramBody, refund: refundBody };

  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("form[data-form]");
    if (!form) return;
    ev.preventDefault();
    const build = BUILDERS[form.dataset.form];
    if (!build) return;
    const out = statusEl(form);
    clearMarks(form);
    const built = build(form);
    if (built.none) { show(out, "Nothing changed.", "warn"); return; }
    if (built.bad) { mark(built.bad); show(out, "Please enter " + built.message + ".", "error"); return; }
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    show(out, form.dataset.form === "refund" ? "Refunding…" : "Sending to the cabinet…", "warn");
    const r = await fb.post(form.dataset.url, built.body);
    if (button) button.disabled = false;
    if (r.ok) {
      form.querySelectorAll("input").forEach((i) => { i.defaultValue = i.value; });
      if (form.dataset.form === "refund") {
        const what = form.dataset.what || "the sale";
        show(out, "Refunded " + fb.fen(r.body.amount_fen) + " for " + what +
          "; the resident's balance is " + fb.fen(r.body.balance_fen) + ".", "ok");
      } else {
        show(out, "The cabinet took the change.", "ok");
      }
      if (document.activeElement) document.activeElement.blur();
      schedule();
    } else {
      if (r.body && r.body.field) mark(fieldInput(form, r.body.field, built));
      show(out, errorText(r), "error");
    }
  });
})();
