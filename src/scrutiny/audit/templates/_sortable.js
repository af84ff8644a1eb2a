// Sort a table.sortable by a click (or Enter) on a column's heading: numbers (a cell's
// data-v, else the number its text starts with) numerically, other cells as text;
// a second click reverses. Cells with no value ("n/a", "-") sort last.
document.querySelectorAll("table.sortable").forEach(function (table) {
  var head = table.tHead ? table.tHead.rows[0] : table.rows[0];
  Array.from(head.cells).forEach(function (th, col) {
    th.tabIndex = 0;
    th.title = "sort by this column";
    function value(row) {
      var c = row.cells[col];
      if (!c) { return null; }
      var t = c.dataset.v !== undefined ? c.dataset.v : c.textContent.trim().replace(/,/g, "");
      var n = parseFloat(t);
      return isNaN(n) ? (t === "" || t === "n/a" || t === "\u2013" || t === "\u2014" ? null : t) : n;
    }
    function sort() {
      var rows = Array.from(table.rows).filter(function (r) {
        return r !== head && r.parentNode.tagName !== "THEAD" && r.cells.length === head.cells.length;
      });
      if (!rows.length) { return; }
      var asc = th.getAttribute("aria-sort") === "descending";
      head.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var parent = rows[0].parentNode, after = rows[rows.length - 1].nextSibling;
      rows.sort(function (a, b) {
        var x = value(a), y = value(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var d = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return asc ? d : -d;
      });
      rows.forEach(function (r) { parent.insertBefore(r, after); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
});
