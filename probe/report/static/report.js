// probe's report page: draws each run's views from the JSON embedded in the page (no network).
// Accuracy figures arrive ready-made from Python; the PCA and confusion views are drawn here, per layer.
(function () {
  // Sense colours and the confusion colour scale come from Python (probe/report/legend.py), as the PNGs'.
  const PLOT_CONFIG = {displaylogo: false, responsive: true};

  function make(tag, attrs, text) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // A row of controls: a position picker (when there are several) and a layer slider with its label.
  function layerControls(view, positions, layers, onChange) {
    const controls = make("div", {class: "controls"});
    const position = make("select", {"data-role": "position"});
    positions.forEach(p => position.appendChild(make("option", {value: p}, `at the ${p} token`)));
    const slider = make("input", {type: "range", min: 0, max: layers.length - 1, step: 1,
                                  value: layers.length - 1, "data-role": "layer"});
    const label = make("span", {class: "value", "data-role": "layer-label"});
    if (positions.length > 1) controls.appendChild(position);
    const text = make("label", {}, "layer ");
    text.appendChild(slider);
    controls.append(text, label);
    const plot = make("div", {class: "plot"});
    view.append(controls, plot);
    function update() {
      const layer = layers[+slider.value];
      label.textContent = `layer ${layer} of ${layers[0]}–${layers[layers.length - 1]}` +
        (layer === 0 ? " (the embeddings)" : ` (the output of block ${layer - 1})`);
      onChange(plot, position.value, layer);
    }
    slider.addEventListener("input", update);
    position.addEventListener("change", update);
    update();
  }

  // n panels side by side, wrapped after three: axis domains for a plotly layout.
  function panelAxes(n, xTitles, yTitles, titles) {
    const cols = Math.min(n, 3), rows = Math.ceil(n / cols), gap = 0.07, vgap = 0.18;
    const layout = {annotations: []};
    for (let i = 0; i < n; i++) {
      const c = i % cols, r = Math.floor(i / cols), suffix = i ? String(i + 1) : "";
      const w = (1 - gap * (cols - 1)) / cols, h = (1 - vgap * (rows - 1)) / rows;
      const x0 = c * (w + gap), y1 = 1 - r * (h + vgap);
      layout["xaxis" + suffix] = {domain: [x0, x0 + w], anchor: "y" + suffix, title: {text: xTitles[i]}, zeroline: false};
      layout["yaxis" + suffix] = {domain: [y1 - h, y1], anchor: "x" + suffix, title: {text: yTitles[i]}, zeroline: false};
      layout.annotations.push({text: titles[i], showarrow: false, xref: "paper", yref: "paper",
                               x: x0 + w / 2, y: y1 + 0.02, xanchor: "center", yanchor: "bottom"});
    }
    return {layout, rows};
  }

  // a row's text in a plotly title: its markup shown as text, never interpreted
  function escapeText(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  function subsetsOf(run) {
    return [...new Set(run.layers.map(r => r.subset))];
  }

  function pcaView(view, run) {
    const positions = Object.keys(run.pca);
    const layers = Object.keys(run.pca[positions[0]]).map(Number).sort((a, b) => a - b);
    const labels = [...new Set(run.rows.label)].sort();
    const subsets = run.rows.subset ? ["all", ...[...new Set(run.rows.subset)].sort()] : ["all"];
    layerControls(view, positions, layers, (plot, position, layer) => {
      const p = run.pca[position][String(layer)];
      const axisTitle = k => `PC${k + 1} (${(100 * p.explained[k]).toFixed(1)}% of variance)`;
      const {layout, rows} = panelAxes(subsets.length, subsets.map(() => axisTitle(0)),
                                       subsets.map(() => axisTitle(1)), subsets.map(s => `${s} rows`));
      const traces = [];
      subsets.forEach((subset, i) => labels.forEach(sense => {
        const idx = run.rows.label.map((l, n) => n).filter(n => run.rows.label[n] === sense &&
          (subset === "all" || run.rows.subset[n] === subset) && p.x[n] !== null);
        traces.push({type: "scatter", mode: "markers", name: sense, legendgroup: sense, showlegend: i === 0,
                     x: idx.map(n => p.x[n]), y: idx.map(n => p.y[n]), text: idx.map(n => run.rows.text[n]),
                     marker: {color: run.sense_colours[sense] || "#7f7f7f", size: 6, opacity: 0.75},
                     xaxis: "x" + (i ? i + 1 : ""), yaxis: "y" + (i ? i + 1 : ""),
                     hovertemplate: `<b>${sense}</b><br>%{text}<extra></extra>`});
      }));
      // massive-activation outliers are left out of the fit (report_data.json's left_out): say which
      const leftOut = p.left_out || [];
      const note = leftOut.length ? `<br><sub>${leftOut.length} outlier row(s) left out of the PCA: ` +
        leftOut.slice(0, 3).map(n => escapeText(run.rows.text[n].slice(0, 40))).join(" · ") +
        (leftOut.length > 3 ? " …" : "") + "</sub>" : "";
      Object.assign(layout, {title: {text: `${run.name}: ${position}-token vectors at layer ${layer}, PCA${note}`},
                             height: 420 * rows + 60, template: "plotly_white", hovermode: "closest",
                             margin: {t: 80}});
      Plotly.react(plot, traces, layout, PLOT_CONFIG);
    });
  }

  // Each true sense's row divided by its count: the diagonal is the recall (a sense with no rows stays 0).
  function recall(confusion) {
    return confusion.map(row => {
      const total = row.reduce((a, b) => a + b, 0);
      return row.map(count => total ? count / total : 0);
    });
  }

  function confusionView(view, run, scale) {
    const positions = [...new Set(run.layers.map(r => r.position))];
    const layers = [...new Set(run.layers.map(r => r.layer))].sort((a, b) => a - b);
    const subsets = subsetsOf(run);
    layerControls(view, positions, layers, (plot, position, layer) => {
      const rows = subsets.map(s => run.layers.find(r => r.layer === layer && r.position === position && r.subset === s));
      const {layout, rows: nRows} = panelAxes(subsets.length, subsets.map(() => "predicted sense"),
        subsets.map(() => "true sense"), rows.map((r, i) => `${subsets[i]} rows: accuracy ${r.accuracy.toFixed(3)}`));
      const traces = rows.map((r, i) => ({
        type: "heatmap", z: recall(r.confusion), text: r.confusion, x: r.labels, y: r.labels,
        colorscale: scale, zmin: 0, zmax: 1, showscale: i === 0,
        colorbar: {title: {text: "share of the true<br>sense's rows (recall)", side: "right"}, len: 0.9},
        texttemplate: "%{text}", xaxis: "x" + (i ? i + 1 : ""), yaxis: "y" + (i ? i + 1 : ""),
        hovertemplate: "true %{y}, predicted %{x}: %{text} rows (%{z:.0%} of true %{y})<extra></extra>"}));
      rows.forEach((r, i) => { layout["yaxis" + (i ? i + 1 : "")].autorange = "reversed"; });
      Object.assign(layout, {title: {text: `${run.name}: confusion at layer ${layer}, ${position} token`},
                             height: 360 * nRows + 80, template: "plotly_white", margin: {t: 90}});
      Plotly.react(plot, traces, layout, PLOT_CONFIG);
    });
  }

  // Draws the report inside ``root`` (a div.probe-report holding its data as JSON).
  window.probeReport = function (root) {
    const data = JSON.parse(root.querySelector("script[data-probe-data]").textContent);
    data.runs.forEach((run, i) => {
      const section = root.querySelector(`section[data-run="${i}"]`);
      const view = name => section.querySelector(`[data-view=${name}]`);
      Plotly.newPlot(view("accuracy").querySelector(".plot"), run.accuracy.data, run.accuracy.layout, PLOT_CONFIG);
      if (run.recall) Plotly.newPlot(view("recall").querySelector(".plot"), run.recall.data, run.recall.layout, PLOT_CONFIG);
      if (run.pca) pcaView(view("pca"), run);
      if (view("confusion")) confusionView(view("confusion"), run, data.confusion_scale);
      if (run.attention) probeAttentionViewer(view("attention").querySelector(".probe-attention"), run.attention);
    });
    if (data.comparison) {
      const plot = root.querySelector("[data-view=comparison] .plot");
      Plotly.newPlot(plot, data.comparison.data, data.comparison.layout, PLOT_CONFIG);
    }
    root.setAttribute("data-ready", "true");  // for tests and screenshots: every view is drawn
    document.body.setAttribute("data-ready", "true");
  };
})();
