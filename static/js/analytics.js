// Analytics pages: fetch the JSON API and draw with the vendored Chart.js. No framework.
(() => {
  // Labels in the page's language, from the JSON the template renders (keys stay English).
  const text = JSON.parse((document.getElementById("analytics-text") || {}).textContent || "{}");
  const t = (key) => text[key] || key;
  // The page's language (Babel's choice, not the browser's) for numbers, dates and weekdays.
  const lang = text.locale || document.documentElement.lang || "zh-CN";
  const number = new Intl.NumberFormat(lang);
  // The server sends local wall times of the portal's zone ("2026-12-02 08:00"); read as UTC
  // and shown in UTC they keep their clock whatever the browser's zone is.
  const wall = (label) => {
    const m = /^(\d{4})-(\d\d)-(\d\d)(?: (\d\d):(\d\d))?$/.exec(label || "");
    return m ? new Date(Date.UTC(+m[1], m[2] - 1, +m[3], +(m[4] || 0), +(m[5] || 0))) : null;
  };
  const dateFormats = {
    day: new Intl.DateTimeFormat(lang, {timeZone: "UTC", month: "short", day: "numeric"}),
    week: new Intl.DateTimeFormat(lang, {timeZone: "UTC", year: "numeric", month: "short", day: "numeric"}),
    hour: new Intl.DateTimeFormat(lang, {timeZone: "UTC", month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23"}),
    weekdayHour: new Intl.DateTimeFormat(lang, {timeZone: "UTC", weekday: "short", month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23"}),
  };
  const dateLabel = (label, kind) => {
    const moment = wall(label);
    return moment ? dateFormats[kind].format(moment) : label;
  };
  const narrow = () => window.matchMedia("(max-width: 640px)").matches;
  // Long titles make a bar chart's axis wider than a phone: cut them, the tooltip has them all.
  const shorten = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
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
    // A no-break space: a narrow column never leaves the unit alone on a line.
    if (kind === "percent") return (value * 100).toFixed(1) + "\u00a0%";
    if (kind === "bytes") {
      const units = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
      return value.toFixed(i ? 1 : 0) + "\u00a0" + units[i];
    }
    return number.format(value);
  };
  // Axes of counts (downloads, people): whole-number ticks, never "0.5 downloads".
  const countAxis = () => ({beginAtZero: true, ticks: {precision: 0}});
  const charts = {};
  const draw = (id, config) => {
    const canvas = document.getElementById(id);
    if (!canvas || !window.Chart) return;
    if (charts[id]) charts[id].destroy();
    // The box (.chart in portal.css) sets the height; a fixed aspect ratio made the charts a
    // strip on a phone.
    config.options = {animation: false, responsive: true, maintainAspectRatio: false,
                      locale: lang, ...config.options};
    charts[id] = new Chart(canvas, config);
  };
  const topChart = (id, rows, filePage) => {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    const top = rows.slice(0, 10);
    // One bar a line: the box grows with the bars rather than squeezing them.
    canvas.parentElement.style.height = `${Math.max(6, 2.2 * top.length + 2)}rem`;
    draw(id, {type: "bar", data: {labels: top.map((r) => shorten(r.title, narrow() ? 12 : 36)),
      datasets: [{label: t("downloads"), data: top.map((r) => r.downloads), backgroundColor: "#1f6feb"}]},
      options: {indexAxis: "y", plugins: {legend: {display: false},
        tooltip: {callbacks: {title: (items) => top[items[0].dataIndex].title}}},
        scales: {x: countAxis()},
        onClick: (_event, items) => {
          if (items.length && filePage) location.href = filePage.replace(/0$/, top[items[0].index].file_id);
        }}});
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
      cells[2].textContent = change === null ? "–" : (change > 0 ? "+" : "") + (change * 100).toFixed(1) + "\u00a0%";
    });
    const table = document.getElementById("top-files");
    const rows = await getJSON(withParams(table.dataset.api));
    topChart("top-chart", rows, table.dataset.filePage);
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
    draw("series-chart", {type: "line", data: {labels: s.labels.map((l) => dateLabel(l, s.step)), datasets: [
      {label: t("downloads"), data: s.downloads, borderColor: "#1f6feb"},
      {label: t("completed"), data: s.completed, borderColor: "#2da44e"}]},
      options: {scales: {y: countAxis()}}});
    const heat = document.getElementById("heatmap");
    heatmap = await getJSON(heat.dataset.api);
    drawHeatmap();
    const f = await getJSON(document.getElementById("forecast-chart").dataset.api);
    draw("forecast-chart", {type: "bar", data: {labels: f.labels.map((l) => dateLabel(l, "weekdayHour")),
      datasets: [{label: t("forecast"), data: f.values, backgroundColor: "#8250df"}]},
      options: {scales: {x: {ticks: {maxRotation: 60, autoSkipPadding: 8}}}}});
    refreshCsv();
  }

  // Weekdays across and hours down on a phone (7 columns fit, 24 do not); hours across on
  // a desk.
  let heatmap = null;
  function drawHeatmap() {
    const heat = document.getElementById("heatmap");
    if (!heat || !heatmap) return;
    const h = heatmap, max = Math.max(1, ...h.values.flat());
    const cell = (tag, content) => { const c = document.createElement(tag); c.textContent = content; return c; };
    const value = (day, hour) => {
      const v = h.values[day][hour], td = cell("td", number.format(v));
      td.title = `${t(h.weekdays[day])} ${String(hour).padStart(2, "0")}:00 · ${number.format(v)}`;
      td.style.background = `rgba(31,111,235,${(v / max).toFixed(2)})`;
      if (v / max > 0.6) td.classList.add("dark");
      return td;
    };
    const tall = narrow();
    heat.classList.toggle("tall", tall);
    const head = document.createElement("tr");
    head.append(cell("th", ""));
    let rows;
    if (tall) {
      head.append(...h.weekdays.map((day) => cell("th", t(day))));
      rows = h.hours.map((hour) => {
        const tr = document.createElement("tr");
        tr.append(cell("th", String(hour).padStart(2, "0")), ...h.weekdays.map((_d, i) => value(i, hour)));
        return tr;
      });
    } else {
      head.append(...h.hours.map((hour) => cell("th", hour)));
      rows = h.weekdays.map((day, i) => {
        const tr = document.createElement("tr");
        tr.append(cell("th", t(day)), ...h.hours.map((hour) => value(i, hour)));
        return tr;
      });
    }
    heat.querySelector("tbody").replaceChildren(head, ...rows);
  }
  window.matchMedia("(max-width: 640px)").addEventListener("change", drawHeatmap);

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
    draw("file-series", {type: "line", data: {labels: s.labels.map((l) => dateLabel(l, s.step)), datasets: [
      {label: t("downloads"), data: s.downloads, borderColor: "#1f6feb"}]},
      options: {scales: {y: countAxis()}}});
    draw("completion-chart", {type: "bar", data: {labels: d.completion_histogram.labels,
      datasets: [{label: t("downloads"), data: d.completion_histogram.values,
        backgroundColor: "#2da44e"}]}, options: {scales: {y: countAxis()}}});
    draw("clients-chart", {type: "doughnut", data: {labels: Object.keys(d.clients).map(t),
      datasets: [{data: Object.values(d.clients)}]},
      options: {plugins: {legend: {position: narrow() ? "bottom" : "right"}}}});
    document.querySelector("#versions tbody").replaceChildren(...d.versions.map((v) => {
      const tr = document.createElement("tr");
      [v.version, fmt(v.downloads), fmt(v.completion_rate, "percent")].forEach((c) => {
        const td = document.createElement("td"); td.textContent = c; tr.append(td); });
      return tr;
    }));
  }

  // The admin overview: the week's top files, given in the page (no second request).
  function dashboardPage() {
    const data = document.getElementById("top-data");
    if (data) topChart("top-chart", JSON.parse(data.textContent), document.getElementById("top-more").dataset.filePage);
  }

  const page = document.getElementById("analytics") ? overviewPage
    : document.getElementById("analytics-time") ? timePage
    : document.getElementById("analytics-file") ? filePage
    : document.getElementById("dashboard-top") ? dashboardPage : null;
  if (!page) return;
  if (filters) filters.addEventListener("change", page);
  document.addEventListener("DOMContentLoaded", page);
  if (document.readyState !== "loading") page();
})();
