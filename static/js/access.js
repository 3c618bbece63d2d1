// The access picker (templates/admin/_access.html): only the input the chosen kind needs is
// shown (and sent), and the people list follows what is typed (GET /admin/people?q=...), so a campus
// of thousands is not sent with every page. The server validates whatever is submitted.
(() => {
  const picker = document.getElementById("access-picker");
  if (!picker) return;
  const kind = document.getElementById("access-kind");
  const show = () => {
    for (const label of picker.querySelectorAll("label[data-kind]")) {
      label.hidden = label.dataset.kind !== kind.value;
      // A hidden field is not sent: the server refuses a group or person named beside
      // another kind of access rather than guess which was meant.
      for (const input of label.querySelectorAll("input")) input.disabled = label.hidden;
    }
  };
  kind.addEventListener("change", show);
  show();

  const person = document.getElementById("access-user");
  const list = document.getElementById("access-users");
  let timer = null;
  let asked = "";
  person.addEventListener("input", () => {
    clearTimeout(timer);
    const q = person.value.trim();
    if (q.length < 2 || q === asked) return;
    timer = setTimeout(async () => {
      asked = q;
      try {
        const response = await fetch(`${person.dataset.search}?q=${encodeURIComponent(q)}`,
                                     {credentials: "same-origin"});
        if (!response.ok) return;
        const {people} = await response.json();
        list.replaceChildren(...people.map(({username, display_name}) => {
          const option = document.createElement("option");
          option.value = username;
          option.textContent = display_name || username;
          return option;
        }));
      } catch (_) { /* the offered list stays; the server still checks the name */ }
    }, 200);
  });
})();

// The rule a picker spells, for the upload widget's tus metadata (the same spelling the
// server composes from the form: portal.access.compose_access).
function accessRule(form) {
  const kind = form.elements.access_kind ? form.elements.access_kind.value : "login";
  if (kind === "group") {
    return "group:" + form.elements.access_group.value.split(/[\s,，、;；]+/)
      .filter(Boolean).join(",");
  }
  if (kind === "user") return "user:" + form.elements.access_user.value.trim();
  return kind;
}
