// Tokens coloured by the probability they were drawn with, and a tooltip of the most likely tokens at that
// step: shared by the playground (app.js) and the exported web page (textgen export --format html).
"use strict";

function visible(text) {
  return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "␣") || "∅";
}

// top: {token text: logprob} of the most likely tokens at that step
function addToken(out, text, logprob, top) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  span.style.setProperty("--p", Math.exp(logprob).toFixed(4));
  span.dataset.logprob = String(logprob);
  span.dataset.top = JSON.stringify(top || {});
  out.appendChild(span);
}

function showTip(tip, span, event) {
  const chosen = span.textContent;
  const rows = Object.entries(JSON.parse(span.dataset.top))
    .map(([token, lp]) => [token, Math.exp(lp)])
    .sort((a, b) => b[1] - a[1]);
  if (!rows.some(([token]) => token === chosen)) rows.push([chosen, Math.exp(Number(span.dataset.logprob))]);
  const table = document.createElement("table");
  for (const [token, p] of rows) {
    const tr = table.insertRow();
    if (token === chosen) tr.className = "chosen";
    tr.insertCell().textContent = visible(token);
    const num = tr.insertCell();
    num.className = "num";
    num.textContent = `${(100 * p).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round(80 * p))}px`;
    tr.insertCell().appendChild(bar);
  }
  tip.replaceChildren(table);
  tip.hidden = false;
  const x = Math.min(event.clientX + 12, window.innerWidth - tip.offsetWidth - 8);
  const y = Math.min(event.clientY + 16, window.innerHeight - tip.offsetHeight - 8);
  tip.style.left = `${x}px`;
  tip.style.top = `${y}px`;
}

// Show the tooltip while the pointer is over a token of `out`.
function explainTokens(out, tip) {
  out.addEventListener("mouseover", (e) => {
    if (e.target.classList.contains("tok")) showTip(tip, e.target, e);
  });
  out.addEventListener("mouseout", (e) => {
    if (e.target.classList.contains("tok")) tip.hidden = true;
  });
}
