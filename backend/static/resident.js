// The resident pages: the cabinet page's Open button and live receipt, and /me
// (balance, top-up, wallet history, receipts). Plain DOM, no framework; data from the
// server only ever goes in as text (never as HTML).
(function () {
  "use strict";

  const KINDS = { topup: "Top-up", charge: "Purchase", refund: "Refund", adjust: "Adjustment" };
  const FLAGS = {
    needs_review: "An operator will check this sale; you were charged for the lower possible count.",
    misplaced_return: "An item was put back on another shelf: it was not charged.",
    foreign_object: "Something that is not ours was left on a shelf.",
    unlock_unused: "The door was never opened: no charge.",
    recovered: "Recorded after the cabinet restarted.",
  };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data") || k === "datetime" || k === "colspan" || k === "role") {
        node.setAttribute(k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()), String(v));
      } else node[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const fen = (n) => (typeof n === "number" ? fb.fen(n) : "-");
  const grams = (g, digits) => (Number(g) || 0).toFixed(digits || 0) + " g";
  const signedGrams = (g) => ((Number(g) || 0) >= 0 ? "+" : "") + grams(g, 1);

  function timeText(iso) {
    const d = new Date(iso);
    if (isNaN(d.getTime())) return iso || "";
    return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function localTimes(root) {
    for (const node of (root || document).querySelectorAll("time.local[datetime]")) {
      node.textContent = timeText(node.getAttribute("datetime"));
    }
  }

  // the same markup as templates/_receipt.html
  const cabinetNames = {};

  function renderReceipt(r, balanceFen) {
    const names = {};
    for (const ln of r.lines || []) names[ln.lane] = ln.name || ln.sku;
    const lines = (r.lines || []).map((ln) =>
      el("tr", { dataTestid: "receipt-line" },
        el("td", {}, ln.name || ln.sku),
        el("td", { class: "num" },
          ln.qty !== null && ln.qty !== undefined
            ? [ln.qty + " × " + fen(ln.unit_price_fen), el("br"), el("span", { class: "muted" }, grams(ln.weight_g))]
            : [grams(ln.weight_g), el("br"), el("span", { class: "muted" }, fen(ln.unit_price_fen) + "/kg")]),
        el("td", { class: "num" }, fen(ln.amount_fen))));
    if (!lines.length) lines.push(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "Nothing taken.")));
    const foot = [el("tr", {}, el("th", { colspan: 2 }, "Total"),
      el("td", { class: "num", dataTestid: "receipt-total" }, fen(r.total_fen)))];
    if (r.charged_fen !== r.total_fen) {
      foot.push(el("tr", {}, el("th", { colspan: 2 }, "Charged"), el("td", { class: "num" }, fen(r.charged_fen))));
    }
    if (r.refunded_fen) {
      foot.push(el("tr", {}, el("th", { colspan: 2 }, "Refunded"),
        el("td", { class: "num ok", dataTestid: "receipt-refunded" }, fen(r.refunded_fen))));
    }
    const parts = [
      el("header", { class: "receipt-head" },
        el("strong", {}, r.cabinet_name || cabinetNames[r.cabinet_id] || r.cabinet_id),
        el("time", { class: "local", datetime: r.at }, timeText(r.at))),
      el("table", { class: "receipt-lines" },
        el("thead", {}, el("tr", {}, el("th", {}, "Item"), el("th", { class: "num" }, "Qty / weight"),
          el("th", { class: "num" }, "Amount"))),
        el("tbody", {}, lines),
        el("tfoot", {}, foot)),
    ];
    for (const flag of r.flags || []) {
      parts.push(el("p", { class: "warn flag", dataFlag: flag }, FLAGS[flag] || flag));
    }
    if (r.review === "pending") parts.push(el("p", { class: "warn" }, "Under review by the operator."));
    if ((r.evidence || []).length) {
      parts.push(el("table", { class: "evidence", dataTestid: "receipt-evidence" },
        el("caption", {}, "Shelf weights (before → after the door was opened)"),
        el("thead", {}, el("tr", {}, el("th", {}, "Shelf"), el("th", { class: "num" }, "Before"),
          el("th", { class: "num" }, "After"), el("th", { class: "num" }, "Change"))),
        el("tbody", {}, r.evidence.map((ev) => el("tr", {},
          el("td", {}, names[ev.lane] || "lane " + ev.lane),
          el("td", { class: "num" }, grams(ev.before_g, 1)),
          el("td", { class: "num" }, grams(ev.after_g, 1)),
          el("td", { class: "num" }, signedGrams(ev.delta_g)))))));
    }
    parts.push(el("p", { class: "proof" }, "Record ",
      el("span", { class: "hash", dataTestid: "receipt-hash" }, r.record_hash || ""), " ",
      r.verified
        ? el("span", { class: "ok", dataTestid: "receipt-verified" }, "verified ✓")
        : el("span", { class: "error", dataTestid: "receipt-verified" }, "not verified")));
    if (typeof balanceFen === "number") {
      parts.push(el("p", {}, "New balance ", el("strong", { dataTestid: "receipt-balance" }, fen(balanceFen))));
    }
    return el("article", {
      class: "receipt", dataTestid: "receipt-doc",
      dataCabinet: r.cabinet_id, dataSeq: r.seq, dataSession: r.session_id,
    }, parts);
  }

  function setBalance(n) {
    if (typeof n !== "number") return;
    for (const node of document.querySelectorAll('[data-testid="balance"]')) {
      node.textContent = fb.fen(n);
      node.classList.toggle("negative", n < 0);
    }
  }

  function setStatus(node, text, kind) {
    if (!node) return;
    node.textContent = text;
    node.classList.remove("ok", "error", "warn");
    if (kind) node.classList.add(kind);
  }

  // One EventSource per page; after a dropped connection `onReconnect` runs so the
  // page can fetch what it may have missed.
  function listen(onEvent, onReconnect) {
    if (!window.EventSource) return null;
    const es = new EventSource("/api/events");
    let dropped = false;
    es.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      onEvent(ev);
    };
    es.onerror = () => { dropped = true; };
    es.onopen = () => {
      if (dropped && onReconnect) onReconnect();
      dropped = false;
    };
    return es;
  }

  async function getJSON(url) {
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!resp.ok) throw new Error(resp.statusText);
    return resp.json();
  }

  // ------------------------------------------------------------ cabinet page

  function initCabinet(root) {
    const cabinet = root.dataset.cabinet;
    const button = document.getElementById("open");
    const status = document.getElementById("open-status");
    const box = document.getElementById("receipt");
    if (!button || !status || !box) return; // not a resident: the button is a login link
    let waiting = null; // {session: id} while a door session of ours runs

    function showReceipt(r, balanceFen) {
      box.replaceChildren(renderReceipt(r, balanceFen));
      localTimes(box);
      setBalance(balanceFen);
      setStatus(status, r.total_fen > 0 ? "Thank you! Your receipt:" : "Door closed: nothing was charged.", "ok");
      waiting = null;
      button.disabled = false;
    }

    listen((ev) => {
      if (ev.type === "receipt" && ev.cabinet_id === cabinet) showReceipt(ev, ev.balance_fen);
      else if (ev.type === "wallet" || typeof ev.balance_fen === "number") setBalance(ev.balance_fen);
    }, async () => {
      if (!waiting) return;
      try {
        const page = await getJSON("/api/receipts?limit=5");
        const r = page.receipts.find((x) => x.cabinet_id === cabinet &&
          (!waiting.session || x.session_id === waiting.session));
        if (r) showReceipt(r, undefined);
      } catch (err) { /* the stream will deliver it */ }
    });

    button.addEventListener("click", async () => {
      button.disabled = true;
      setStatus(status, "Opening…", "");
      let res;
      try {
        res = await fb.post("/api/cabinets/" + encodeURIComponent(cabinet) + "/open", {});
      } catch (err) {
        setStatus(status, "No connection to the server. Please try again.", "error");
        button.disabled = false;
        return;
      }
      const b = res.body || {};
      if (res.status === 401) {
        window.location.href = root.dataset.login;
        return;
      }
      setBalance(b.balance_fen);
      if (res.ok && b.ok) {
        waiting = { session: b.session_id || null };
        setStatus(status, b.message || "Door open.", "ok");
        box.replaceChildren(el("p", { class: "muted" }, "Your receipt will appear here when you close the door."));
        // never leave the button dead if the receipt is lost on the way
        setTimeout(() => { button.disabled = false; }, 30000);
        return;
      }
      setStatus(status, b.message || "The cabinet could not open.", b.error === "busy" ? "warn" : "error");
      if (b.error === "balance_too_low") {
        status.append(" ", el("a", { href: "/me#topup" }, "Top up"));
      }
      button.disabled = false;
    });
  }

  // ------------------------------------------------------------ /me

  function historyRow(e) {
    return el("tr", { dataTestid: "history-entry", dataKind: e.kind },
      el("td", {}, el("time", { class: "local", datetime: e.at }, timeText(e.at))),
      el("td", {}, KINDS[e.kind] || e.kind, e.note ? el("span", { class: "muted" }, " · " + e.note) : null),
      el("td", { class: "num" + (e.amount_fen > 0 ? " ok" : "") }, fen(e.amount_fen)),
      el("td", { class: "num" }, fen(e.balance_after_fen)));
  }

  function receiptItem(r, balanceFen, open) {
    return el("details", { class: "receipt-item", dataTestid: "receipt-item", dataCabinet: r.cabinet_id,
      dataSeq: r.seq, open: !!open },
      el("summary", {}, el("span", {}, (r.cabinet_name || cabinetNames[r.cabinet_id] || r.cabinet_id) + " · ",
        el("time", { class: "local", datetime: r.at }, timeText(r.at))), el("strong", {}, fen(r.total_fen))),
      renderReceipt(r, balanceFen));
  }

  function parseYuan(text) {
    const s = String(text || "").trim().replace(/^¥/, "");
    if (!/^\d+(\.\d{1,2})?$/.test(s)) return null;
    const [whole, frac] = s.split(".");
    return Number(whole) * 100 + Number((frac || "").padEnd(2, "0"));
  }

  function initMe(root) {
    const maxTopup = Number(root.dataset.maxTopup) || 100000;
    const form = document.getElementById("topup-form");
    const amount = document.getElementById("topup-amount");
    const topupStatus = document.getElementById("topup-status");
    const list = document.getElementById("receipts");
    const more = document.getElementById("receipts-more");
    const history = document.getElementById("history");
    const hint = document.getElementById("balance-hint");
    const seen = new Set(Array.from(list.querySelectorAll("[data-seq]"), (n) => n.dataset.cabinet + "/" + n.dataset.seq));

    async function refreshWallet() {
      try {
        const w = await getJSON("/api/wallet?limit=30");
        setBalance(w.balance_fen);
        if (hint) hint.hidden = !(w.balance_fen < 0 || w.balance_fen < w.min_balance_fen);
        history.replaceChildren(...(w.history.length ? w.history.map(historyRow)
          : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No entries yet."))]));
      } catch (err) { /* keep what is shown */ }
    }

    function addReceipt(r, balanceFen, atTop) {
      const key = r.cabinet_id + "/" + r.seq;
      if (seen.has(key)) return;
      seen.add(key);
      const none = document.getElementById("no-receipts");
      if (none) none.remove();
      const item = receiptItem(r, balanceFen, atTop);
      if (atTop) list.prepend(item); else list.append(item);
      localTimes(item);
    }

    for (const b of form.querySelectorAll("[data-yuan]")) {
      b.addEventListener("click", () => { amount.value = b.dataset.yuan; amount.focus(); });
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const amountFen = parseYuan(amount.value);
      if (amountFen === null || amountFen < 1 || amountFen > maxTopup) {
        setStatus(topupStatus, "Enter an amount from ¥0.01 to " + fb.fen(maxTopup) + ".", "error");
        return;
      }
      const submit = form.querySelector('button[type="submit"]');
      submit.disabled = true;
      setStatus(topupStatus, "Paying…", "");
      try {
        const res = await fb.post("/api/wallet/topup", { amount_fen: amountFen });
        const b = res.body || {};
        if (res.ok && b.status === "pending") {
          setStatus(topupStatus, "Waiting for the payment to be confirmed…", "warn");
        } else if (res.ok) {
          setStatus(topupStatus, "Added " + fb.fen(amountFen) + ". New balance " + fb.fen(b.balance_fen) + ".", "ok");
          amount.value = "";
          setBalance(b.balance_fen);
          await refreshWallet();
        } else {
          setStatus(topupStatus, b.message || "The top-up failed.", "error");
        }
      } catch (err) {
        setStatus(topupStatus, "No connection to the server. Please try again.", "error");
      } finally {
        submit.disabled = false;
      }
    });

    more.addEventListener("click", async () => {
      more.disabled = true;
      try {
        const page = await getJSON("/api/receipts?limit=10&before=" + encodeURIComponent(more.dataset.before));
        for (const r of page.receipts) addReceipt(r, undefined, false);
        more.dataset.before = page.next_before || "";
        more.hidden = !page.next_before;
      } catch (err) { /* try again later */ }
      more.disabled = false;
    });

    listen((ev) => {
      if (ev.type === "receipt") {
        addReceipt(ev, ev.balance_fen, true);
        setBalance(ev.balance_fen);
        refreshWallet();
      } else if (ev.type === "wallet" || typeof ev.balance_fen === "number") {
        setBalance(ev.balance_fen);
        refreshWallet();
      }
    }, async () => {
      refreshWallet();
      try {
        const page = await getJSON("/api/receipts?limit=10");
        for (const r of page.receipts.slice().reverse()) addReceipt(r, undefined, true);
      } catch (err) { /* keep what is shown */ }
    });
  }

  function init() {
    localTimes(document);
    for (const node of document.querySelectorAll("[data-cabinet-name]")) {
      cabinetNames[node.dataset.cabinet] = node.dataset.cabinetName;
    }
    const cab = document.querySelector('[data-page="cabinet"]');
    if (cab && cab.dataset.live) initCabinet(cab);
    const me = document.querySelector('[data-page="me"]');
    if (me) initMe(me);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
