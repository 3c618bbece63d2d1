// Upload page: drag and drop several files; each goes up with tus (resumable across network
// failures and page reloads: tus-js-client keeps each upload's URL in localStorage, keyed by
// the file's fingerprint, and continues from the server's offset). New documents arrive as
// drafts (only their owner and the administrators see them) and are published by a button;
// a new version of a published document stays pending until published on the file's page.
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
  const hint = document.getElementById("upload-hint");
  const text = JSON.parse(document.getElementById("upload-text").textContent);
  const urls = JSON.parse(document.getElementById("upload-urls").textContent);
  const newVersions = Boolean(form.dataset.fileId);

  function human(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function button(label, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function row(file) {
    const li = document.createElement("li");
    li.className = "upload";
    li.innerHTML = '<div class="name"></div><progress max="100" value="0"></progress>' +
      '<span class="status"></span> <span class="actions"></span>';
    li.querySelector(".name").textContent = file.name + " · " + human(file.size);
    list.appendChild(li);
    return li;
  }

  // Publish a draft document, or (number given) one pending version of a published one.
  function publishForm(fileId, number) {
    const publish = document.createElement("form");
    publish.method = "post";
    const path = "/" + encodeURIComponent(fileId) + "/";
    publish.action = number ? urls.publishVersion.replace("/0/versions/0/",
      path + "versions/" + encodeURIComponent(number) + "/") : urls.publish.replace("/0/", path);
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf_token";
    token.value = csrf;
    const submit = document.createElement("button");
    submit.type = "submit";
    submit.className = "primary";
    submit.textContent = number ? text.publishVersion : text.publish;
    publish.append(token, submit);
    return publish;
  }

  // What the server said, in its words (a JSON refusal's message), or a plain sentence.
  function refusal(error) {
    const response = error.originalResponse;
    if (!response || !response.getStatus()) return {message: text.network};
    try {
      const parsed = JSON.parse(response.getBody());
      return {message: parsed.message || parsed.error, duplicate: parsed.duplicate};
    } catch (_) {
      return {message: text.network};
    }
  }

  function start(file, metadata, li) {
    li = li || row(file);
    li.className = "upload";
    const bar = li.querySelector("progress");
    const status = li.querySelector(".status");
    bar.value = 0;
    status.textContent = "";
    const actions = li.querySelector(".actions");
    let upload = null;
    actions.replaceChildren(button(text.cancel, () => {
      upload.abort(true).then(() => {
        status.textContent = text.cancelled;
        actions.replaceChildren();
      });
    }));
    upload = new tus.Upload(file, {
      endpoint: form.dataset.endpoint,
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
      removeFingerprintOnSuccess: true,
      headers: {"X-CSRFToken": csrf},
      metadata: metadata,
      onShouldRetry(error) {  // a refusal is final; only a lost connection is retried
        const response = error.originalResponse;
        const code = response ? response.getStatus() : 0;
        return !code || code >= 500 || code === 423;
      },
      onProgress(sent, total) {
        const pct = total ? Math.floor((sent / total) * 100) : 100;
        bar.value = pct;
        status.textContent = pct + "%";
      },
      onError(error) {
        li.classList.add("failed");
        const said = refusal(error);
        status.textContent = said.duplicate ? said.message : text.failed + ": " + said.message;
        if (said.duplicate) {
          const open = document.createElement("a");
          open.href = said.duplicate.url;
          open.textContent = " " + text.open;
          status.appendChild(open);
          actions.replaceChildren(
            button(text.skip, () => {
              li.classList.remove("failed");
              status.textContent = text.skipped;
              actions.replaceChildren();
            }),
            button(text.anyway, () => start(file, {...metadata, duplicate: "allow"}, li)));
          return;
        }
        actions.replaceChildren(button(text.retry, () => start(file, metadata, li)));
      },
      onSuccess(payload) {
        bar.value = 100;
        li.classList.add("done");
        const response = payload && payload.lastResponse;
        const url = response && response.getHeader("Upload-File-Url");
        const fileId = response && response.getHeader("Upload-File-Id");
        const draft = response && response.getHeader("Upload-File-Draft") === "1";
        const pending = response && response.getHeader("Upload-Version-Pending") === "1";
        status.textContent = draft ? text.draft : pending ? text.pending : text.done;
        actions.replaceChildren();
        if (url) {
          const a = document.createElement("a");
          a.href = url;
          a.textContent = text.open;
          actions.appendChild(a);
        }
        if (fileId && draft) actions.appendChild(publishForm(fileId));
        const number = response && response.getHeader("Upload-Version");
        if (fileId && pending && number) actions.appendChild(publishForm(fileId, number));
      },
    });
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  }

  // The metadata every file of this choice goes up with, or null (and a hint) when the
  // audience is not chosen yet.
  function chosen(count) {
    if (newVersions) return {file_id: form.dataset.fileId};
    if (!form.elements.access_kind.value) {
      hint.textContent = text.chooseAccess;
      hint.hidden = false;
      form.elements.access_kind.focus();
      return null;
    }
    hint.hidden = true;
    return {
      title: count === 1 ? form.elements.title.value.trim() : "",
      category: form.elements.category.value,
      access: accessRule(form),
      description: form.elements.description.value,
      draft: "1",
    };
  }

  function take(files) {
    const common = chosen(files.length);
    if (!common) return;
    for (const file of files) {
      if (file.size === 0) {
        const li = row(file);
        li.classList.add("failed");
        li.querySelector(".status").textContent = text.failed + ": " + text.empty;
        continue;
      }
      const metadata = {filename: file.name, ...common};
      if (!metadata.title) delete metadata.title;
      start(file, metadata);
    }
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
