/* Progressive enhancement only: the table, tree and findings are complete without JS. */
(function () {
  "use strict";
  var table = document.getElementById("layers-table");
  if (table) {
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    var failing = document.getElementById("f-failing");
    var kind = document.getElementById("f-kind");
    var state = document.getElementById("f-state");
    var ftype = document.getElementById("f-ftype");
    var path = document.getElementById("f-path");
    var search = document.getElementById("f-search");
    var shown = document.getElementById("rows-shown");

    var apply = function () {
      var q = search.value.trim().toLowerCase();
      var n = 0;
      rows.forEach(function (r) {
        var d = r.dataset;
        var visible = (!failing.checked || d.ok === "0") &&
          (!kind.value || d.kind === kind.value) &&
          (!state.value || d.state === state.value) &&
          (!ftype.value || (" " + d.ftypes + " ").indexOf(" " + ftype.value + " ") >= 0) &&
          (!path.value || d.path === path.value || d.path.indexOf(path.value + ".") === 0) &&
          (!q || d.search.indexOf(q) >= 0);
        r.hidden = !visible;
        if (visible) { n += 1; }
      });
      shown.textContent = String(n);
    };
    [failing, kind, state, ftype, path].forEach(function (el) { el.addEventListener("change", apply); });
    search.addEventListener("input", apply);

    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var cellValue = function (row, col, numeric) {
      var cell = row.cells[col];
      if (numeric) {
        var v = parseFloat(cell.getAttribute("data-v"));
        return isNaN(v) ? Infinity : v;
      }
      return cell.textContent.trim().toLowerCase();
    };
    heads.forEach(function (th, col) {
      th.querySelector("button").addEventListener("click", function () {
        var numeric = th.getAttribute("data-type") === "num";
        var asc = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var keyed = rows.map(function (r, i) { return [cellValue(r, col, numeric), i, r]; });
        keyed.sort(function (a, b) {
          if (a[0] < b[0]) { return asc ? -1 : 1; }
          if (a[0] > b[0]) { return asc ? 1 : -1; }
          return a[1] - b[1];
        });
        var frag = document.createDocumentFragment();
        keyed.forEach(function (k) { frag.appendChild(k[2]); });
        tbody.appendChild(frag);
        rows = keyed.map(function (k) { return k[2]; });
      });
    });

    Array.prototype.forEach.call(document.querySelectorAll(".show-rows"), function (btn) {
      btn.addEventListener("click", function () {
        search.value = btn.getAttribute("data-search").toLowerCase();
        failing.checked = false; kind.value = ""; state.value = ""; ftype.value = ""; path.value = "";
        apply();
        document.getElementById("layers").scrollIntoView();
      });
    });
  }

  var setTree = function (open) {
    Array.prototype.forEach.call(document.querySelectorAll(".tree details"), function (d) { d.open = open; });
  };
  var ex = document.getElementById("tree-expand");
  var co = document.getElementById("tree-collapse");
  if (ex) { ex.addEventListener("click", function () { setTree(true); }); }
  if (co) { co.addEventListener("click", function () { setTree(false); }); }
})();
