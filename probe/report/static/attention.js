// probe's attention viewer: pick a sentence, a block and a head; tokens are shaded by the attention the
// query token (the target word, or any token you click) gives them. Hatched cells are masked keys.
window.probeAttentionViewer = window.probeAttentionViewer || function (root, sentences) {
  // Start in the middle block: the first attends mostly to itself, the last mostly to the first token.
  const state = {sentence: 0, block: Math.floor((sentences[0].patterns.length - 1) / 2), head: 0,
                 query: sentences[0].target};

  function make(tag, attrs, text) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  function labelled(text, control) {
    const label = make("label", {}, text + " ");
    label.appendChild(control);
    return label;
  }
  function shade(el, w) {  // w in [0, 1]: white to dark blue, white text on dark cells
    el.style.background = `rgba(31, 80, 160, ${w.toFixed(3)})`;
    el.style.color = w > 0.55 ? "#fff" : "#111";
  }
  function shown(s) { return s.tokens.map(t => t.replace(/\n/g, "⏎") || "␣"); }

  // The weight from query q to key k in the chosen block and head (or the mean over heads).
  function weight(s, q, k) {
    const heads = s.patterns[state.block];
    if (state.head >= 0) return heads[state.head][q][k] / s.scale;
    let total = 0;
    for (const h of heads) total += h[q][k];
    return total / heads.length / s.scale;
  }

  const controls = make("div", {class: "controls"});
  const sentenceSelect = make("select", {"data-role": "sentence"});
  sentences.forEach((s, i) => sentenceSelect.appendChild(
    make("option", {value: i}, `[${[s.subset, s.label].filter(Boolean).join(" · ")}] `.replace("[] ", "") + s.text)));
  const blockInput = make("input", {type: "range", min: 0, step: 1, "data-role": "block"});
  const blockLabel = make("span", {"data-role": "block-label", class: "value"});
  const headSelect = make("select", {"data-role": "head"});
  controls.append(labelled("sentence", sentenceSelect), labelled("block", blockInput), blockLabel,
                  labelled("head", headSelect));
  const queryLabel = make("p", {"data-role": "query-label", class: "hint"});
  const tokens = make("div", {"data-role": "tokens", class: "tokens"});
  const grid = make("table", {"data-role": "grid", class: "grid"});
  const legend = make("p", {class: "hint"},
    "Rows: the token attending (query); columns: the token attended to (key). Darker = more weight; " +
    "hatched = masked (a causal model's future tokens get −∞ before the softmax). Click a token to make it the query.");
  root.append(controls, queryLabel, tokens, grid, legend);

  function setupSentence() {
    const s = sentences[state.sentence];
    const nBlocks = s.patterns.length, nHeads = s.patterns[0].length;
    blockInput.max = nBlocks - 1;
    state.block = Math.min(state.block, nBlocks - 1);
    blockInput.value = state.block;
    headSelect.innerHTML = "";
    headSelect.appendChild(make("option", {value: -1}, "mean of heads"));
    for (let h = 0; h < nHeads; h++) headSelect.appendChild(make("option", {value: h}, `head ${h}`));
    state.head = Math.min(state.head, nHeads - 1);
    headSelect.value = state.head;
    state.query = s.target;
  }

  function drawTokens(s, names) {
    tokens.innerHTML = "";
    names.forEach((name, k) => {
      const span = make("span", {class: "token", "data-index": k}, name);
      if (s.masked[state.query][k]) {
        span.classList.add("masked");
        span.title = `${name}: masked for query ${JSON.stringify(names[state.query])} (a future token)`;
      } else {
        const w = weight(s, state.query, k);
        shade(span, w);
        span.title = `${JSON.stringify(names[state.query])} → ${JSON.stringify(name)}: ${w.toFixed(3)}`;
      }
      if (k === state.query) span.classList.add("query");
      span.addEventListener("click", () => { state.query = k; render(); });
      tokens.appendChild(span);
    });
  }

  function drawGrid(s, names) {
    grid.innerHTML = "";
    const head = make("tr");
    head.appendChild(make("th", {class: "corner"}, "query ↓  key →"));
    names.forEach(name => head.appendChild(make("th", {class: "key"}, name)));
    grid.appendChild(head);
    names.forEach((qName, q) => {
      const row = make("tr", q === state.query ? {class: "query"} : {});
      const label = make("th", {class: "row"}, qName);
      label.addEventListener("click", () => { state.query = q; render(); });
      row.appendChild(label);
      names.forEach((kName, k) => {
        const cell = make("td");
        if (s.masked[q][k]) {
          cell.classList.add("masked");
          cell.title = `${qName} → ${kName}: masked`;
        } else {
          const w = weight(s, q, k);
          shade(cell, w);
          cell.title = `${qName} → ${kName}: ${w.toFixed(3)}`;
        }
        row.appendChild(cell);
      });
      grid.appendChild(row);
    });
  }

  function render() {
    const s = sentences[state.sentence], names = shown(s);
    const nBlocks = s.patterns.length;
    blockLabel.textContent = `block ${state.block} of 0–${nBlocks - 1} (reads layer ${state.block}, ` +
      `writes layer ${state.block + 1})`;
    const who = state.head >= 0 ? `head ${state.head}` : "the mean of all heads";
    queryLabel.textContent = `Attention from ${JSON.stringify(names[state.query])} (token ${state.query}) ` +
      `in block ${state.block}, ${who}.`;
    drawTokens(s, names);
    drawGrid(s, names);
  }

  sentenceSelect.addEventListener("change", () => { state.sentence = +sentenceSelect.value; setupSentence(); render(); });
  blockInput.addEventListener("input", () => { state.block = +blockInput.value; render(); });
  headSelect.addEventListener("change", () => { state.head = +headSelect.value; render(); });
  setupSentence();
  render();
  root.setAttribute("data-ready", "true");
};
