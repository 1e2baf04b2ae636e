// Pages marked <body data-refresh="N"> (the Overview, a running job) re-read themselves every
// N seconds and swap in the new <main>, without a full reload (scroll and open details stay).
// Only server-rendered, escaped HTML is ever swapped in; nothing here builds markup itself.
"use strict";
(function () {
  function schedule(seconds) {
    window.setTimeout(refresh, seconds * 1000);
  }
  async function refresh() {
    if (document.hidden) { schedule(2); return; }
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok || response.redirected) { return; }  // logged out or gone: leave the page as it is
      const next = new DOMParser().parseFromString(await response.text(), "text/html");
      const main = next.getElementById("main");
      if (main) { document.getElementById("main").replaceWith(document.adoptNode(main)); }
      const again = next.body.dataset.refresh;
      if (again) { schedule(Number(again)); } else { delete document.body.dataset.refresh; }
    } catch (e) {
      schedule(10);  // the console restarting: try again later
    }
  }
  const seconds = Number(document.body.dataset.refresh);
  if (seconds > 0) { schedule(seconds); }
})();
