// The webhook inspector: lists what /demo/inbox received, newest first, refreshed live.

const list = document.getElementById("deliveries");
const count = document.getElementById("count");
const shown = new Set();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function render(delivery) {
  const badge = delivery.verified
    ? el("span", { class: "pill ok", "data-verified": "true" }, "✓ Signature verified")
    : el("span", { class: "pill bad", "data-verified": "false", title: delivery.reason },
        `✗ Not verified: ${delivery.reason}`);
  const rows = Object.entries(delivery.headers).map(([name, value]) =>
    el("tr", {}, el("th", {}, name), el("td", {}, value)));
  const when = new Date(delivery.receivedAt).toLocaleTimeString();
  return el("article", { class: "delivery", "data-id": delivery.id },
    el("div", { class: "head" },
      el("span", { class: "type" }, delivery.eventType || "(no x-event-type)"), badge,
      el("span", { class: "when muted" }, `received ${when}`)),
    el("div", { class: "parts" },
      el("div", {}, el("h2", {}, "Headers"), el("table", { class: "headers" }, ...rows)),
      el("div", {}, el("h2", {}, "Body"), el("pre", {}, delivery.body))));
}

async function refresh() {
  try {
    const response = await fetch("/demo/inbox/deliveries", { cache: "no-store" });
    const { deliveries } = await response.json();
    for (const delivery of [...deliveries].reverse()) {
      if (shown.has(delivery.id)) continue;
      shown.add(delivery.id);
      list.prepend(render(delivery));
    }
    document.getElementById("empty").hidden = shown.size > 0;
    count.textContent = `${shown.size} received`;
  } finally {
    setTimeout(refresh, 500); // a delivery shows up within a second of its arrival
  }
}

refresh();
