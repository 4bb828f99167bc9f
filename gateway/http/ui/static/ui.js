// Sovereign Gateway admin UI: small progressive enhancements; every page works without them.
// - forms/buttons with data-confirm ask first;
// - data-fill buttons copy a suggested reply into the reply box;
// - an element with data-live-fragment is refreshed from that URL whenever the server's
//   event stream (/live) says something changed (new messages, status changes, deliveries).
"use strict";
(function () {
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var ask = (button && button.getAttribute("data-confirm")) || event.target.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) {
      event.preventDefault();
      return;
    }
    if (button && button.hasAttribute("data-busy")) {
      button.textContent = button.getAttribute("data-busy");
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-fill]");
    if (!button) return;
    var box = document.getElementById("reply-text");
    if (box) {
      box.value = button.getAttribute("data-fill");
      box.focus();
    }
  });

  var targets = document.querySelectorAll("[data-live-fragment]");
  if (!targets.length || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var say = function (text) { if (status) status.textContent = text; };
  var busy = false, again = false;

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var jobs = Array.prototype.map.call(targets, function (target) {
      return fetch(target.getAttribute("data-live-fragment"), {
        credentials: "same-origin", headers: { "Accept": "text/html" }, cache: "no-store"
      }).then(function (response) {
        if (response.status === 401) { window.location.reload(); return; }
        if (!response.ok) return;
        return response.text().then(function (html) {
          var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
          target.innerHTML = html;
          if (atBottom && target.id === "conversation") window.scrollTo(0, document.body.scrollHeight);
        });
      });
    });
    Promise.all(jobs).catch(function () {}).then(function () {
      busy = false;
      document.body.setAttribute("data-refreshed", String(Date.now()));
      if (again) { again = false; refresh(); }
    });
  }

  var stream = new EventSource("/live");
  stream.addEventListener("ready", function () {
    say("live");
    document.body.setAttribute("data-live", "ready");
  });
  stream.addEventListener("change", refresh);
  stream.addEventListener("signout", function () { stream.close(); window.location.reload(); });
  stream.onerror = function () { say("reconnecting…"); document.body.setAttribute("data-live", "lost"); };
})();
