// Analytics pages: fetch the JSON API and draw with the vendored Chart.js. No framework.
(() => {
  // Labels in the page's language, from the JSON the template renders (keys stay English).
  const text = JSON.parse((document.getElementById("analytics-text") || {}).textContent || "{}");
  const t = (key) => text[key] || key;
  const filters = document.getElementById("filters");
  const params = () => new URLSearchParams(filters ? new FormData(filters) : undefined);
  const getJSON = async (url) => (await fetch(url, {credentials: "same-origin"})).json();
  const withParams = (base, extra = {}) => {
    const url = new URL(base, location.href);
    params().forEach((v, k) => { if (v) url.searchParams.set(k, v); });
    Object.entries(extra).forEach(([k, v]) => url.searchParams.set(k, v));
    return url.toString();
  };
  const fmt = (value, kind) => {
    if (value === null || value === undefined) return "–";
    if (kind === "percent") return (value * 100).toFixed(1) + " %";
    if (kind === "bytes") {
      const units = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
      return value.toFixed(i ? 1 : 0) + " " + units[i];
    }
    return Number(value).toLocaleString();
  };
  const charts = {};
  const draw = (id, config) => {
    const canvas = document.getElementById(id);
    if (!canvas || !window.Chart) return;
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart(canvas, config);
  };
  const refreshCsv = () => document.querySelectorAll("a.csv").forEach((a) => {
    a.href = withParams(a.href.split("?")[0], {format: "csv"});
  });

  async function overviewPage() {
    const box = document.getElementById("analytics");
    const data = await getJSON(withParams(box.dataset.api));
    document.querySelectorAll("#overview tr[data-key]").forEach((row) => {
      const key = row.dataset.key, kind = row.dataset.format, cells = row.querySelectorAll("td");
      cells[0].textContent = fmt(data.current[key], kind);
      cells[1].textContent = fmt(data.previous[key], kind);
      const change = data.change[key];
      cells[2].textContent = change === null ? "–" : (change > 0 ? "+" : "") + (change * 100).toFixed(1) + " %";
    });
    const table = document.getElementById("top-files");
    const rows = await getJSON(withParams(table.dataset.api));
    const body = table.querySelector("tbody");
    body.replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      const link = document.createElement("a");
      link.href = table.dataset.filePage.replace(/0$/, r.file_id);
      link.textContent = r.title;
      const cells = [link, r.category, fmt(r.downloads), fmt(r.unique_users), fmt(r.completion_rate, "percent")];
      cells.forEach((c) => { const td = document.createElement("td"); td.append(c); tr.append(td); });
      return tr;
    }));
    refreshCsv();
  }

  async function timePage() {
    const canvas = document.getElementById("series-chart");
    const s = await getJSON(withParams(canvas.dataset.api));
    draw("series-chart", {type: "line", data: {labels: s.labels, datasets: [
      {label: t("downloads"), data: s.downloads, borderColor: "#1f6feb"},
      {label: t("completed"), data: s.completed, borderColor: "#2da44e"}]},
      options: {animation: false, scales: {y: {beginAtZero: true}}}});
    const heat = document.getElementById("heatmap");
    const h = await getJSON(heat.dataset.api);
    const max = Math.max(1, ...h.values.flat());
    const head = document.createElement("tr");
    head.append(document.createElement("th"), ...h.hours.map((x) => {
      const th = document.createElement("th"); th.textContent = x; return th; }));
    const rows = h.weekdays.map((day, i) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.textContent = t(day); tr.append(th);
      h.values[i].forEach((v) => {
        const td = document.createElement("td");
        td.textContent = v; td.title = `${t(day)} ${v}`;
        td.style.background = `rgba(31,111,235,${(v / max).toFixed(2)})`;
        tr.append(td);
      });
      return tr;
    });
    heat.querySelector("tbody").replaceChildren(head, ...rows);
    const f = await getJSON(document.getElementById("forecast-chart").dataset.api);
    draw("forecast-chart", {type: "bar", data: {labels: f.labels,
      datasets: [{label: t("forecast"), data: f.values, backgroundColor: "#8250df"}]},
      options: {animation: false}});
    refreshCsv();
  }

  async function filePage() {
    const box = document.getElementById("analytics-file");
    const d = await getJSON(withParams(box.dataset.api));
    const totals = document.getElementById("file-totals");
    totals.replaceChildren();
    [["downloads"], ["unique_users"], ["bytes_served", "bytes"], ["completion_rate", "percent"],
     ["cache_hit_rate", "percent"]].forEach(([key, kind]) => {
      const dt = document.createElement("dt"); dt.textContent = t(key);
      const dd = document.createElement("dd"); dd.textContent = fmt(d.totals[key], kind);
      totals.append(dt, dd);
    });
    const s = await getJSON(withParams(box.dataset.series));
    draw("file-series", {type: "line", data: {labels: s.labels, datasets: [
      {label: t("downloads"), data: s.downloads, borderColor: "#1f6feb"}]},
      options: {animation: false, scales: {y: {beginAtZero: true}}}});
    draw("completion-chart", {type: "bar", data: {labels: d.completion_histogram.labels,
      datasets: [{label: t("downloads"), data: d.completion_histogram.values,
        backgroundColor: "#2da44e"}]},
      options: {animation: false}});
    draw("clients-chart", {type: "doughnut", data: {labels: Object.keys(d.clients).map(t),
      datasets: [{data: Object.values(d.clients)}]},
      options: {animation: false, aspectRatio: 2.5}});  // a doughnut defaults to square
    document.querySelector("#versions tbody").replaceChildren(...d.versions.map((v) => {
      const tr = document.createElement("tr");
      [v.version, fmt(v.downloads), fmt(v.completion_rate, "percent")].forEach((c) => {
        const td = document.createElement("td"); td.textContent = c; tr.append(td); });
      return tr;
    }));
  }

  const page = document.getElementById("analytics") ? overviewPage
    : document.getElementById("analytics-time") ? timePage
    : document.getElementById("analytics-file") ? filePage : null;
  if (!page) return;
  if (filters) filters.addEventListener("change", page);
  document.addEventListener("DOMContentLoaded", page);
  if (document.readyState !== "loading") page();
})();
