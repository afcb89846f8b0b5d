// probe's attention viewer: pick a sentence, a block and a head; tokens are shaded by the attention the
// query token (the target word, or any token you click) gives them. Hatched cells are masked keys. Below,
// every head of the block as small multiples; options: a log colour scale, and the first token (the
// "attention sink" most heads park weight on) hidden, each query's other weights re-normalised.
window.probeAttentionViewer = window.probeAttentionViewer || function (root, sentences) {
  // Start in the middle block: the first attends mostly to itself, the last mostly to the first token.
  const state = {sentence: 0, block: Math.floor((sentences[0].patterns.length - 1) / 2), head: 0,
                 query: sentences[0].target, log: false, hideSink: false};
  const LOG_FLOOR = 1e-3;  // the log scale runs from 10^-3 (white) to 1 (dark); weights are stored per mille

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
  // A weight's colour intensity in [0, 1]: the weight itself, or on the log scale its place between 10^-3 and 1.
  function intensity(w) {
    if (!state.log) return w;
    return Math.max(0, 1 + Math.log10(Math.max(w, LOG_FLOOR)) / 3);
  }
  function colour(w) { return `rgba(31, 80, 160, ${intensity(w).toFixed(3)})`; }
  function shade(el, w) {  // white to dark blue, white text on dark cells
    el.style.background = colour(w);
    el.style.color = intensity(w) > 0.55 ? "#fff" : "#111";
  }
  function shown(s) { return s.tokens.map(t => t.replace(/\n/g, "⏎") || "␣"); }

  // One head's weight from query q to key k; with the sink hidden, null for key 0 and the others divided by
  // what key 0 leaves (1 − w₀), so that each query's row sums to 1 again (null when nothing is left).
  function headWeight(s, h, q, k) {
    const row = s.patterns[state.block][h][q];
    if (!state.hideSink) return row[k] / s.scale;
    const rest = s.scale - row[0];
    return k === 0 || rest <= 0 ? null : row[k] / rest;
  }
  // The weight from query q to key k in the chosen head (or the mean over heads); null: not shown.
  function weight(s, q, k, head = state.head) {
    if (head >= 0) return headWeight(s, head, q, k);
    const heads = s.patterns[state.block].map((_, h) => headWeight(s, h, q, k));
    if (heads.some(w => w === null)) return null;
    return heads.reduce((a, b) => a + b, 0) / heads.length;
  }
  function isHidden(s, q, k) { return weight(s, q, k) === null; }

  const controls = make("div", {class: "controls"});
  const sentenceSelect = make("select", {"data-role": "sentence"});
  sentences.forEach((s, i) => sentenceSelect.appendChild(
    make("option", {value: i}, `[${[s.subset, s.label].filter(Boolean).join(" · ")}] `.replace("[] ", "") + s.text)));
  const blockInput = make("input", {type: "range", min: 0, step: 1, "data-role": "block"});
  const blockLabel = make("span", {"data-role": "block-label", class: "value"});
  const headSelect = make("select", {"data-role": "head"});
  const logInput = make("input", {type: "checkbox", "data-role": "log-scale"});
  const sinkInput = make("input", {type: "checkbox", "data-role": "hide-sink"});
  controls.append(labelled("sentence", sentenceSelect), labelled("block", blockInput), blockLabel,
                  labelled("head", headSelect), labelled("log colour scale", logInput),
                  labelled("hide the first token (sink)", sinkInput));
  const queryLabel = make("p", {"data-role": "query-label", class: "hint"});
  const tokens = make("div", {"data-role": "tokens", class: "tokens"});
  const grid = make("table", {"data-role": "grid", class: "grid"});
  const legend = make("p", {class: "hint"},
    "Rows: the token attending (query); columns: the token attended to (key). Darker = more weight; " +
    "hatched = masked (a causal model's future tokens get −∞ before the softmax). Click a token to make it the query.");
  const scaleNote = make("p", {class: "hint", "data-role": "scale-note"});
  const headsTitle = make("p", {class: "hint", "data-role": "heads-title"});
  const heads = make("div", {class: "heads", "data-role": "heads"});
  root.append(controls, queryLabel, tokens, grid, legend, scaleNote, headsTitle, heads);

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
      } else if (isHidden(s, state.query, k)) {
        span.classList.add("hidden-sink");
        span.title = `${name}: hidden (the first token, left out and the rest re-normalised)`;
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
        } else if (isHidden(s, q, k)) {
          cell.classList.add("hidden-sink");
          cell.title = `${qName} → ${kName}: hidden`;
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
    scaleNote.textContent = (state.log ? "Colour: log scale, 10⁻³ (white) to 1 (dark). "
                                       : "Colour: weight, 0 (white) to 1 (dark). ") +
      (state.hideSink ? "The first token is hidden: each query's other weights are divided by 1 − (its weight on " +
        "the first token), so that they sum to 1 again." : "");
    drawTokens(s, names);
    drawGrid(s, names);
    drawHeads(s, names);
  }

  // Every head of the block, small multiples: one query × key picture per head (the chosen head outlined);
  // click a picture to choose that head.
  function drawHeads(s, names) {
    const n = names.length, nHeads = s.patterns[state.block].length;
    const cell = Math.max(2, Math.min(8, Math.floor(120 / n)));
    headsTitle.textContent = `Every head of block ${state.block}, query × key (rows × columns), as above; ` +
      "the red row is the query. Click one to choose it.";
    heads.innerHTML = "";
    for (let h = 0; h < nHeads; h++) {
      const figure = make("figure", {class: "head" + (h === state.head ? " chosen" : ""), "data-head": h});
      const canvas = make("canvas", {width: n * cell, height: n * cell});
      const paint = canvas.getContext("2d");
      for (let q = 0; q < n; q++) {
        for (let k = 0; k < n; k++) {
          const w = s.masked[q][k] ? null : weight(s, q, k, h);
          paint.fillStyle = w === null ? "#d8d8d8" : colour(w);
          paint.fillRect(k * cell, q * cell, cell, cell);
        }
      }
      paint.strokeStyle = "#d62728";
      paint.strokeRect(0.5, state.query * cell + 0.5, n * cell - 1, cell - 1);
      figure.append(canvas, make("figcaption", {}, `head ${h}`));
      figure.addEventListener("click", () => { state.head = h; headSelect.value = h; render(); });
      heads.appendChild(figure);
    }
  }

  sentenceSelect.addEventListener("change", () => { state.sentence = +sentenceSelect.value; setupSentence(); render(); });
  blockInput.addEventListener("input", () => { state.block = +blockInput.value; render(); });
  headSelect.addEventListener("change", () => { state.head = +headSelect.value; render(); });
  logInput.addEventListener("change", () => { state.log = logInput.checked; render(); });
  sinkInput.addEventListener("change", () => { state.hideSink = sinkInput.checked; render(); });
  setupSentence();
  render();
  root.setAttribute("data-ready", "true");
};
