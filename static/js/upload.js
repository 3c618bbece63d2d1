// Upload page: drag and drop several files; each goes up with tus (resumable across network
// failures and page reloads: tus-js-client keeps each upload's URL in localStorage, keyed by
// the file's fingerprint, and continues from the server's offset).
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  // Files go up with tus, never as a form post (Enter in a text field would submit it).
  form.addEventListener("submit", (event) => event.preventDefault());
  if (!window.tus) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const drop = document.getElementById("drop-zone");
  const picker = document.getElementById("file-picker");
  const list = document.getElementById("upload-list");
  const text = JSON.parse(document.getElementById("upload-text").textContent);

  function stem(name) {
    const dot = name.lastIndexOf(".");
    return dot > 0 ? name.slice(0, dot) : name;
  }

  function human(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function row(file) {
    const li = document.createElement("li");
    li.className = "upload";
    li.innerHTML = '<div class="name"></div><progress max="100" value="0"></progress>' +
      '<span class="status"></span> <button type="button" class="cancel"></button>';
    li.querySelector(".name").textContent = file.name + " · " + human(file.size);
    li.querySelector(".cancel").textContent = text.cancel;
    list.appendChild(li);
    return li;
  }

  function start(file) {
    const li = row(file);
    const bar = li.querySelector("progress");
    const status = li.querySelector(".status");
    const metadata = {
      filename: file.name,
      title: form.dataset.fileId ? "" : stem(file.name),
      category: form.elements.category ? form.elements.category.value : "",
      access: form.dataset.fileId ? "" : accessRule(form),
      description: form.elements.description ? form.elements.description.value : "",
    };
    if (form.dataset.fileId) metadata.file_id = form.dataset.fileId;
    const upload = new tus.Upload(file, {
      endpoint: form.dataset.endpoint,
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
      removeFingerprintOnSuccess: true,
      headers: {"X-CSRFToken": csrf},
      metadata: metadata,
      onProgress(sent, total) {
        const pct = total ? Math.floor((sent / total) * 100) : 100;
        bar.value = pct;
        status.textContent = pct + "%";
      },
      onError(error) {
        li.classList.add("failed");
        const response = error.originalResponse;
        let detail = response ? response.getBody() : String(error);
        try {
          const parsed = JSON.parse(detail);
          detail = parsed.message || parsed.error || detail;
        } catch (_) { /* plain text */ }
        status.textContent = text.failed + ": " + detail;
      },
      onSuccess(payload) {
        bar.value = 100;
        li.classList.add("done");
        li.querySelector(".cancel").hidden = true;
        const response = payload && payload.lastResponse;
        const url = response && response.getHeader("Upload-File-Url");
        status.textContent = text.done;
        if (url) {
          const a = document.createElement("a");
          a.href = url;
          a.textContent = " " + text.open;
          status.appendChild(a);
        }
      },
    });
    li.querySelector(".cancel").addEventListener("click", () => {
      upload.abort(true).then(() => { status.textContent = text.cancelled; });
    });
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  }

  function take(files) {
    for (const file of files) start(file);
  }

  picker.addEventListener("change", () => { take(picker.files); picker.value = ""; });
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (event) => take(event.dataTransfer.files));
})();
