// The login page: a one-time link's token (in the URL fragment, which the browser never
// sends anywhere) is handed over once; otherwise an owner's fleet password.
"use strict";

async function login(body) {
  const resp = await fetch("/api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  location.replace("/");
}

function fail(e) {
  document.getElementById("working").hidden = true;
  document.getElementById("error").textContent = e.message;
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    history.replaceState(null, "", "/login"); // the spent token leaves the address bar
    document.getElementById("working").hidden = false;
    login({ token }).catch(fail);
  }
  document.getElementById("password-form").addEventListener("submit", (e) => {
    e.preventDefault();
    login({
      user: document.getElementById("user").value,
      password: document.getElementById("password").value,
    }).catch(fail);
  });
});
