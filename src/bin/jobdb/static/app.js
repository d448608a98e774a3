// jobdb serve's pages: actions through the JSON API, and the overview's live counts.
// Nothing here is built from data: values come from data-* attributes (escaped by the
// server) and from JSON, and are written with textContent only.
"use strict";

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.error || r.statusText);
  return answer;
}

function say(text) {
  const box = document.getElementById("message");
  if (box) box.textContent = text;
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const d = button.dataset;
  try {
    if (d.action === "bulk") {
      const filter = {};
      if (d.queue) filter.queue = d.queue;
      if (d.state) filter.state = d.state;
      if (d.key) filter.unique_key = d.key;
      if (!window.confirm(d.verb + " every job this list shows?")) return;
      const r = await post("/api/jobs/bulk", { action: d.verb, filter, confirm: true });
      say(d.verb + ": " + r.done + " done, " + r.skipped + " skipped");
    } else if (d.action === "job") {
      await post("/api/jobs/" + encodeURIComponent(d.id) + "/" + d.verb);
      say(d.verb + ": done");
    } else if (d.action === "queue") {
      await post("/api/queues/" + encodeURIComponent(d.queue) + "/" + d.verb);
      say(d.verb + ": done");
    }
    setTimeout(() => window.location.reload(), 300);
  } catch (e) {
    say("error: " + e.message);
  }
});

document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-action=enqueue]");
  if (!form) return;
  event.preventDefault();
  try {
    const f = new FormData(form);
    const r = await post("/api/jobs", {
      queue: f.get("queue"),
      payload: JSON.parse(f.get("payload")),
      priority: Number(f.get("priority") || 0),
      delay_ms: Number(f.get("delay_ms") || 0),
    });
    say("enqueued job " + r.id);
  } catch (e) {
    say("error: " + e.message);
  }
});

// The overview refreshes its counts every 2 s.
async function refresh() {
  const table = document.getElementById("queues");
  if (!table) return;
  try {
    const r = await fetch("/api/queues", { credentials: "same-origin" });
    const queues = await r.json();
    for (const q of queues) {
      for (const cell of table.querySelectorAll("td[data-queue]")) {
        if (cell.dataset.queue !== q.queue) continue;
        const v = cell.dataset.field in q.counts ? q.counts[cell.dataset.field] : q[cell.dataset.field];
        if (v === undefined || v === null) continue;
        const target = cell.querySelector("a") || cell;
        target.textContent = typeof v === "number" ? String(Math.round(v * 10) / 10) : String(v);
      }
    }
    const asOf = document.getElementById("as-of");
    if (asOf && queues.length > 0) {
      asOf.textContent = "Counts as of " + new Date(queues[0].as_of).toISOString().slice(11, 19) + " UTC";
    }
  } catch (e) {
    /* the next poll tries again */
  }
}
setInterval(refresh, 2000);
