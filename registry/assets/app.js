// Steward status page: live updates over server-sent events. The page works without this
// script; it only swaps server-rendered (escaped) fragments in place and ticks ages.
(function () {
  "use strict";
  var MAX_EVENTS = 50;

  function fmtAge(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-ts]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("data-ts"));
      if (!isNaN(t)) el.textContent = fmtAge((now - t) / 1000);
    });
  }

  // Parses server-rendered HTML without running anything in it.
  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    return t.content.firstElementChild;
  }

  function swap(id, html, flash) {
    var old = document.getElementById(id);
    var next = fragment(html);
    if (!old || !next) return false;
    old.replaceWith(next);
    if (flash) next.classList.add("flash");
    return true;
  }

  function start() {
    setInterval(tick, 1000);
    var url = document.body.getAttribute("data-stream");
    var live = document.getElementById("live");
    if (!url || !window.EventSource) return;
    var es = new EventSource(url);
    window.stewardUpdates = 0;
    function updated() {
      window.stewardUpdates += 1;
      document.body.setAttribute("data-updates", String(window.stewardUpdates));
    }
    es.onopen = function () {
      if (live) { live.textContent = "live"; live.className = "live on"; }
    };
    es.onerror = function () {
      if (live) { live.textContent = "reconnecting"; live.className = "live off"; }
    };
    es.addEventListener("reload", function () {
      es.close();
      location.reload();
    });
    es.addEventListener("row", function (e) {
      var d = JSON.parse(e.data);
      if (swap("node-" + d.id, d.html, true)) updated();
    });
    es.addEventListener("detail", function (e) {
      var d = JSON.parse(e.data);
      if (swap("detail", d.html, false)) updated();
    });
    es.addEventListener("summary", function (e) {
      if (swap("summary", JSON.parse(e.data).html, false)) updated();
    });
    es.addEventListener("event", function (e) {
      var list = document.getElementById("events");
      var li = fragment(JSON.parse(e.data).html);
      if (!list || !li) return;
      if (list.querySelector('[data-seq="' + li.getAttribute("data-seq") + '"]')) return;
      list.prepend(li);
      li.classList.add("flash");
      while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
      updated();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
