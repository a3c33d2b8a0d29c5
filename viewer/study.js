// Reader study: fetch the reader's next pair, record the answer, repeat. The server stores every
// answer when it is given, so closing the browser loses nothing; the reader id is remembered.
"use strict";

const $ = (id) => document.getElementById(id);
let reader = localStorage.getItem("lazyslide-reader") || "";
let current = null;
let busy = false;

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function next() {
  const res = await fetch(`/study/api/next?reader=${encodeURIComponent(reader)}`);
  if (!res.ok) { showError(await res.text()); return; }
  const body = await res.json();
  $("progress").textContent = `${body.answered} / ${body.total}`;
  if (body.done) {
    $("pair").hidden = true;
    $("done").hidden = false;
    current = null;
    return;
  }
  current = body;
  $("pair-meta").textContent = `Level ${body.level} · ${body.mpp} µm/px`;
  $("left").src = body.left;
  $("right").src = body.right;
  $("pair").hidden = false;
}

async function choose(choice) {
  if (!current || busy) return;
  busy = true;
  try {
    const res = await fetch("/study/api/answer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reader, pair: current.pair, choice }),
    });
    if (!res.ok) showError(await res.text()); else showError("");
    await next();
  } finally {
    busy = false;
  }
}

function start(name) {
  reader = name.trim();
  if (!reader) return;
  localStorage.setItem("lazyslide-reader", reader);
  $("reader-name").textContent = reader;
  $("reader-form").hidden = true;
  next();
}

$("reader-form").addEventListener("submit", (e) => { e.preventDefault(); start($("reader").value); });
for (const b of document.querySelectorAll("[data-choice]")) {
  b.addEventListener("click", () => choose(b.dataset.choice));
}
document.addEventListener("keydown", (e) => {
  if (e.key === "1") choose("left");
  if (e.key === "2") choose("right");
});
if (reader) { $("reader").value = reader; start(reader); }
window.lazyslideStudy = { choose, get current() { return current; } };
