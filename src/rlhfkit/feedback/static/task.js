// The task page. All task text is untrusted: it is only ever inserted with textContent.
"use strict";
const data = JSON.parse(document.getElementById("task-data").textContent);
const root = document.getElementById("task");
const message = document.getElementById("message");

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function promptText(prompt) {
  return typeof prompt === "string" ? [{ role: "user", content: prompt }] : prompt;
}

function showPrompt() {
  const box = el("div", { class: "prompt" });
  box.appendChild(el("h2", {}, "Prompt"));
  for (const m of promptText(data.prompt)) {
    const turn = el("div", { class: "turn " + m.role });
    turn.appendChild(el("span", { class: "role" }, m.role));
    turn.appendChild(el("pre", {}, m.content));
    box.appendChild(turn);
  }
  root.appendChild(box);
}

async function post(path, body) {
  const res = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
    body: JSON.stringify(body),
  });
  const out = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(out.error || res.statusText);
  return out;
}

async function submit(judgement) {
  message.textContent = "Submitting…";
  try {
    // the same submission key on every retry: the server records it once
    await post(`/api/assignments/${data.assignment}/submit`, { judgement, submission_key: data.submission_key });
    window.location.assign(`/projects/${encodeURIComponent(data.project)}/next`);
  } catch (e) {
    message.textContent = "Not saved: " + e.message;
  }
}

function skipControls() {
  const box = el("div", { class: "skip" });
  const reason = el("input", { id: "skip-reason", placeholder: "why skip? e.g. the task is unclear" });
  const button = el("button", { type: "button", id: "skip" }, "Skip this task");
  button.addEventListener("click", async () => {
    try {
      await post(`/api/assignments/${data.assignment}/skip`, { reason: reason.value });
      window.location.assign(`/projects/${encodeURIComponent(data.project)}/next`);
    } catch (e) { message.textContent = e.message; }
  });
  box.append(reason, button);
  return box;
}

// ---- ranking: outputs go into rank buckets (drag and drop, or focus an output and press 1-9) ----
function rankingTask() {
  const k = data.responses.length;
  const rankOf = new Array(k).fill(null);
  const help = el("p", { class: "help" },
    "Rate each output, then rank them: drag outputs into the rows, or focus an output and press 1-" + k +
    ". Put outputs of similar quality in the same row (a tie).");
  root.appendChild(help);

  const cards = data.responses.map((text, i) => {
    const card = el("div", { class: "output", draggable: "true", tabindex: "0", "data-index": String(i) });
    card.appendChild(el("div", { class: "label" }, "Output " + String.fromCharCode(65 + i)));
    card.appendChild(el("pre", {}, text));
    const likert = el("select", { "aria-label": "overall quality 1-7", class: "likert" });
    likert.appendChild(el("option", { value: "" }, "quality 1-7"));
    for (let v = 1; v <= 7; v++) likert.appendChild(el("option", { value: String(v) }, String(v)));
    card.appendChild(likert);
    const flags = el("details", { class: "flags" });
    flags.appendChild(el("summary", {}, "flags"));
    for (const f of data.flags) {
      const lab = el("label");
      lab.append(el("input", { type: "checkbox", value: f }), document.createTextNode(" " + f.replaceAll("_", " ")));
      flags.appendChild(lab);
    }
    card.appendChild(flags);
    card.addEventListener("dragstart", (ev) => ev.dataTransfer.setData("text/plain", String(i)));
    card.addEventListener("keydown", (ev) => {
      const n = parseInt(ev.key, 10);
      if (n >= 1 && n <= k && ev.target === card) { place(i, n - 1); ev.preventDefault(); }
    });
    return card;
  });

  const pool = el("div", { class: "pool", id: "pool" });
  pool.appendChild(el("div", { class: "label" }, "Not ranked yet"));
  cards.forEach((c) => pool.appendChild(c));
  const buckets = [];
  const board = el("div", { class: "board" });
  for (let r = 0; r < k; r++) {
    const row = el("div", { class: "bucket", "data-rank": String(r) });
    row.appendChild(el("div", { class: "label" }, r === 0 ? "Rank 1 (best)" : "Rank " + (r + 1)));
    row.addEventListener("dragover", (ev) => ev.preventDefault());
    row.addEventListener("drop", (ev) => { ev.preventDefault(); place(parseInt(ev.dataTransfer.getData("text/plain"), 10), r); });
    buckets.push(row);
    board.appendChild(row);
  }
  function place(i, r) {
    rankOf[i] = r;
    buckets[r].appendChild(cards[i]);
    cards[i].focus();
  }
  root.append(pool, board);

  const labels = el("fieldset", { class: "prompt-labels" });
  labels.appendChild(el("legend", {}, "About the prompt"));
  for (const p of data.prompt_labels) {
    const lab = el("label");
    lab.append(el("input", { type: "checkbox", value: p }), document.createTextNode(" " + p.replaceAll("_", " ")));
    labels.appendChild(lab);
  }
  const comment = el("textarea", { id: "comment", placeholder: "optional comment", maxlength: "5000" });
  const send = el("button", { type: "button", id: "submit" }, "Submit ranking");
  send.addEventListener("click", () => {
    if (rankOf.some((r) => r === null)) { message.textContent = "Rank every output first."; return; }
    const used = [...new Set(rankOf)].sort((a, b) => a - b);  // rows left empty close up: ranks 0, 1, 2, …
    const judgement = {
      ranks: rankOf.map((r) => used.indexOf(r)),
      likert: cards.map((c) => { const v = c.querySelector(".likert").value; return v ? parseInt(v, 10) : null; }),
      flags: cards.map((c) => [...c.querySelectorAll(".flags input:checked")].map((x) => x.value)),
      prompt_labels: [...labels.querySelectorAll("input:checked")].map((x) => x.value),
      comment: comment.value,
    };
    submit(judgement);
  });
  root.append(labels, comment, send, skipControls());
}

// ---- pairwise: which of two outputs is better (keys 1, 2, or 0 for a tie) ----
function pairwiseTask() {
  const pair = el("div", { class: "pair" });
  data.responses.forEach((text, i) => {
    const card = el("div", { class: "output" });
    card.appendChild(el("div", { class: "label" }, "Output " + (i + 1)));
    card.appendChild(el("pre", {}, text));
    const pick = el("button", { type: "button", id: "pick-" + i }, "Output " + (i + 1) + " is better");
    pick.addEventListener("click", () => submit({ choice: i }));
    card.appendChild(pick);
    pair.appendChild(card);
  });
  const tie = el("button", { type: "button", id: "pick-tie" }, "About the same");
  tie.addEventListener("click", () => submit({ choice: "tie" }));
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA") return;
    if (ev.key === "1" || ev.key === "2") submit({ choice: parseInt(ev.key, 10) - 1 });
    if (ev.key === "0") submit({ choice: "tie" });
  });
  root.append(pair, tie, skipControls());
}

// ---- demonstration: write the response the model should give ----
function demonstrationTask() {
  const text = el("textarea", { id: "response", rows: "12", maxlength: "20000", placeholder: "Write the ideal response" });
  const send = el("button", { type: "button", id: "submit" }, "Submit response");
  send.addEventListener("click", () => submit({ response: text.value }));
  root.append(text, send, skipControls());
}

showPrompt();
if (data.status !== "leased") {
  root.appendChild(el("p", {}, "This task is " + data.status + "."));
} else if (data.kind === "ranking") {
  rankingTask();
} else if (data.kind === "pairwise") {
  pairwiseTask();
} else {
  demonstrationTask();
}
