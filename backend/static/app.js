// Small helpers shared by the pages: JSON calls that carry the CSRF token.
window.fb = {
  csrf() {
    const m = document.querySelector('meta[name="csrf"]');
    return m ? m.content : "";
  },
  async post(url, data) {
    const resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": fb.csrf() },
      body: JSON.stringify(data || {}),
      credentials: "same-origin",
    });
    let body = {};
    try { body = await resp.json(); } catch (e) { body = { message: resp.statusText }; }
    return { ok: resp.ok, status: resp.status, body };
  },
  fen(n) {
    const s = n < 0 ? "-" : "";
    n = Math.abs(n);
    return s + "¥" + Math.floor(n / 100) + "." + String(n % 100).padStart(2, "0");
  },
};
