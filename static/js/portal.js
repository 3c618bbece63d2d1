// Copy buttons: <button class="copy" data-copy="#selector">; works without a framework.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.value !== undefined ? source.value : source.textContent;
  try {
    await navigator.clipboard.writeText(text.trim());
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents(source);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  button.dataset.done = "1";
});

// The file page's download-manager link: minted on demand (POST with the CSRF token), then
// shown with ready-made aria2c / wget / curl command lines that resume (-c, -C -).
function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

// When a link expires, as the pages show times: in the portal's zone (data-zone), plus how
// long is left in the page's language ("expires in 23 hours" / "23小时后过期"), kept up to
// date each minute. The sentence comes translated from the page (data-expiry).
function localTime(when, zone) {
  const parts = {};
  for (const part of new Intl.DateTimeFormat("en-US", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  }).formatToParts(when)) parts[part.type] = part.value;
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}`;
}

function timeLeft(when, language) {
  const seconds = (when.getTime() - Date.now()) / 1000;
  const format = new Intl.RelativeTimeFormat(language, {numeric: "always"});
  if (Math.abs(seconds) < 90 * 60) return format.format(Math.round(seconds / 60), "minute");
  if (Math.abs(seconds) < 48 * 3600) return format.format(Math.round(seconds / 3600), "hour");
  return format.format(Math.round(seconds / 86400), "day");
}

let expiryTimer = null;

function showExpiry(box, when) {
  const target = document.getElementById("link-expiry");
  const render = () => {
    target.textContent = box.dataset.expiry
      .replace("{time}", localTime(when, box.dataset.zone))
      .replace("{zone}", box.dataset.zone)
      .replace("{relative}", timeLeft(when, document.documentElement.lang || "zh-CN"));
    target.dateTime = when.toISOString();
  };
  render();
  clearInterval(expiryTimer);
  expiryTimer = setInterval(render, 60 * 1000);
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("#make-link");
  if (!button) return;
  const box = document.getElementById("manager");
  const error = document.getElementById("link-error");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  button.disabled = true;
  try {
    const response = await fetch(`/api/files/${box.dataset.fileId}/links`, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
      body: JSON.stringify({version: Number(box.dataset.version)}),
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const link = await response.json();
    const url = shellQuote(link.url);
    const name = shellQuote(link.filename);
    document.getElementById("link-url").value = link.url;
    showExpiry(box, new Date(link.expires_at));
    document.getElementById("cmd-aria2c").textContent =
      `aria2c -x 8 -s 8 -c -o ${name} ${url}`;
    document.getElementById("cmd-wget").textContent = `wget -c -O ${name} ${url}`;
    document.getElementById("cmd-curl").textContent = `curl -fL -C - -o ${name} ${url}`;
    document.getElementById("link-box").hidden = false;
    error.hidden = true;
  } catch (err) {
    error.textContent = String(err);
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});

// The catalog's zip button: disabled until a file is ticked (without scripts the server
// answers an empty selection with the same advice).
(() => {
  const form = document.getElementById("zip-form");
  const button = document.getElementById("zip-selected");
  if (!form || !button) return;
  const update = () => {
    button.disabled = !form.querySelector('input[name="id"]:checked');
  };
  form.addEventListener("change", update);
  window.addEventListener("pageshow", update);  // (ticks kept by the back/forward cache)
  update();
})();
