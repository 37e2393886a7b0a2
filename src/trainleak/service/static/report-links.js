// Added by `trainleak review` to a report.html it serves: a "review" link on each candidate.
// The report marks its candidates with data-review="<the report's name for it>"; this
// script asks the review server which candidate that is and links to it.
"use strict";

(function () {
  const me = document.currentScript;
  const report = Number(me && me.dataset.report);
  async function link() {
    const res = await fetch("/api/candidates");
    if (!res.ok) return;
    const data = await res.json();
    const ids = new Map();
    for (const c of data.candidates) if (c.report === report) ids.set(c.ref, c);
    for (const node of document.querySelectorAll("[data-review]")) {
      const c = ids.get(node.dataset.review);
      if (!c) continue;
      const d = data.decisions[c.id];
      const a = document.createElement("a");
      a.href = "/#" + encodeURIComponent(c.id);
      a.className = "review-link";
      a.textContent = d ? "review (" + d.decision + ")" : "review";
      const cell = node.querySelector(".review-cell") || node;
      cell.append(a);
    }
  }
  link().catch(() => {});
})();
