// Sign in without leaving the page on a wrong token; without JavaScript the form posts as usual.
"use strict";

(() => {
  const form = document.getElementById("login");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    let response;
    try {
      response = await fetch(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin" });
    } catch (_) {
      error.textContent = "The service did not answer.";
      error.hidden = false;
      return;
    }
    if (response.ok && response.redirected) {
      location.assign(response.url);
    } else if (response.ok) {
      location.assign(form.elements.next.value || "/");
    } else {
      error.textContent = response.status === 401 ? "Wrong token." : `Sign-in failed (${response.status}).`;
      error.hidden = false;
      form.elements.token.select();
    }
  });
})();
