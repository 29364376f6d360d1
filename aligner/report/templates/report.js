/* The layer table is drawn from the compact JSON in #layer-data, one page at a time (a full GOLD-YOLO run
   has thousands of rows); filters, sort and page live in the URL query so a view can be shared. */
// Everything runs right after the page is parsed (not during parsing): the first screen shows at once.
window.setTimeout(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var dataEl = $("layer-data");
  var D = dataEl ? JSON.parse(dataEl.textContent) : null;
  var L = D ? D.labels : {};

  var fmt = function (v, digits) {
    if (v === null || v === undefined) { return "–"; }
    if (typeof v !== "number") { return String(v); }
    if (!isFinite(v)) { return String(v); }
    var d = digits === undefined ? 2 : digits;
    // the same text as fmt_num in Python: %.{d}e for tiny/huge values, else %.{d+2}g
    var big = Math.abs(v) >= Math.pow(10, d + 2);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5 || big)) {
      if (!(Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) { d = d + 1; }
      var parts = v.toExponential(d).split("e");
      var mant = parts[0].indexOf(".") >= 0 ? parts[0].replace(/0+$/, "").replace(/\.$/, "") : parts[0];
      var exp = parseInt(parts[1], 10);
      return mant + "e" + (exp < 0 ? "-" : "+") + (Math.abs(exp) < 10 ? "0" : "") + Math.abs(exp);
    }
    return String(parseFloat(v.toPrecision(d + 2)));
  };

  // Row fields (see html.py: LAYER_FIELDS).
  var F = D ? D.fields : [];
  var col = {};
  F.forEach(function (name, i) { col[name] = i; });
  var rows = D ? D.rows : [];
  var N = rows.length;
  var PAGE = D ? D.page_size : 200;
  var tbody = $("layers-body");
  var ui = {
    failing: $("f-failing"), kind: $("f-kind"), state: $("f-state"), ftype: $("f-ftype"),
    path: $("f-path"), q: $("f-search")
  };
  var view = { failing: false, kind: "", state: "", ftype: "", path: "", q: "", sort: "", dir: "", page: 0 };
  var highlighted = -1;
  var lower = rows.map(function (r) {
    return (r[col.torch] + " " + (r[col.jittor] === null ? "" : r[col.jittor]) + " " + D.types[r[col.type]]).toLowerCase();
  });
  var numericCols = { order: 1, max_abs: 1, rel: 1, judged: 1, tol: 1, cos: 1, floor: 1, intro: 1, ok: 1 };

  var matches = function (i) {
    var r = rows[i];
    if (view.failing && r[col.ok]) { return false; }
    if (view.kind && D.kinds[r[col.kind]] !== view.kind) { return false; }
    if (view.state && D.states[r[col.state]] !== view.state) { return false; }
    if (view.ftype && (" " + r[col.ftypes] + " ").indexOf(" " + view.ftype + " ") < 0) { return false; }
    if (view.path) {
      var p = r[col.path] === null ? r[col.torch] : r[col.path];
      if (p !== view.path && p.indexOf(view.path + ".") !== 0) { return false; }
    }
    return !view.q || lower[i].indexOf(view.q) >= 0;
  };
  var sortKey = function (i, key) {
    var v = rows[i][col[key]];
    if (key === "state") { return L.states[v]; }
    if (key === "kind") { return D.kinds[v]; }
    if (key === "type") { return D.types[v].toLowerCase(); }
    if (key === "match") { return D.matches[v]; }
    if (key === "metric") { return D.metrics[v]; }
    if (key === "ok") { return v ? 1 : 0; }
    if (numericCols[key]) { return (v === null || v === undefined) ? Infinity : v; }
    return String(v === null ? rows[i][col.torch] : v).toLowerCase();
  };
  var order = function () {
    var idx = [];
    for (var i = 0; i < N; i += 1) { if (matches(i)) { idx.push(i); } }
    // "only failing" without an explicit sort: the row that introduces the most error first.
    var key = view.sort || (view.failing ? "intro" : "");
    var dir = view.sort ? view.dir : "desc";
    if (key) {
      var keyed = idx.map(function (i) { return [sortKey(i, key), i]; });
      keyed.sort(function (a, b) {
        var x = a[0], y = b[0];
        if (dir === "desc" && x === Infinity) { x = -Infinity; }
        if (dir === "desc" && y === Infinity) { y = -Infinity; }
        if (x < y) { return dir === "desc" ? 1 : -1; }
        if (x > y) { return dir === "desc" ? -1 : 1; }
        return a[1] - b[1];
      });
      idx = keyed.map(function (k) { return k[1]; });
    }
    return idx;
  };

  var td = function (tr, text, cls, title) {
    var c = document.createElement("td");
    c.textContent = text;
    if (cls) { c.className = cls; }
    if (title) { c.title = title; }
    tr.appendChild(c);
    return c;
  };
  var drawRow = function (i) {
    var r = rows[i];
    var tr = document.createElement("tr");
    tr.id = "row-" + i;
    tr.dataset.i = String(i);
    var cls = [];
    if (!r[col.ok]) { cls.push("bad"); }
    if (i === D.first_row) { cls.push("first-div"); }
    if (i === highlighted) { cls.push("target"); }
    tr.className = cls.join(" ");
    td(tr, L.states[r[col.state]], "c-state");
    td(tr, L.kinds[r[col.kind]], "c-kind");
    td(tr, String(r[col.order]), "n c-order");
    var name = td(tr, "", "name c-torch");
    var a = document.createElement("a");
    a.href = "#row-" + i;
    a.textContent = r[col.torch];
    name.appendChild(a);
    if (i === D.first_row) {
      var mark = document.createElement("span");
      mark.className = "fd-mark";
      mark.textContent = L.first_divergence;
      name.appendChild(mark);
    }
    if (r[col.jittor] === null) { td(tr, "=", "name same c-jittor", r[col.torch]); }
    else { td(tr, r[col.jittor], "name c-jittor"); }
    td(tr, D.types[r[col.type]], "c-type");
    td(tr, D.matches[r[col.match]], "c-match");
    td(tr, r[col.shape], r[col.shape_bad] ? "badcell c-shape" : "c-shape");
    td(tr, fmt(r[col.max_abs]), "n");
    // the number the verdict used, against its bound: a noise-dominated row has none to show
    var noise = D.metrics[r[col.metric]] === "noise";
    td(tr, noise ? "–" : fmt(r[col.judged]), r[col.ok] ? "n" : "n badcell");
    td(tr, D.metric_labels[r[col.metric]], noise ? "c-metric noise" : "c-metric");
    td(tr, noise ? "–" : fmt(r[col.tol]), "n");
    td(tr, fmt(r[col.cos], 4), "n");
    td(tr, fmt(r[col.floor]), "n");
    td(tr, r[col.intro] === null ? "–" : fmt(r[col.intro]), "n");
    td(tr, r[col.ok] ? L.ok : L.fail, "verdict-cell");
    return tr;
  };

  var current = [];
  var writeUrl = function () {
    var p = new URLSearchParams();
    ["kind", "state", "ftype", "path", "q", "sort", "dir"].forEach(function (k) { if (view[k]) { p.set(k, view[k]); } });
    if (view.failing) { p.set("failing", "1"); }
    if (view.page) { p.set("page", String(view.page + 1)); }
    var qs = p.toString();
    try { history.replaceState(null, "", (qs ? "?" + qs : location.pathname) + location.hash); } catch (e) { /* keep going */ }
  };
  var render = function () {
    current = order();
    var pages = Math.max(1, Math.ceil(current.length / PAGE));
    if (view.page >= pages) { view.page = pages - 1; }
    if (view.page < 0) { view.page = 0; }
    var frag = document.createDocumentFragment();
    current.slice(view.page * PAGE, (view.page + 1) * PAGE).forEach(function (i) { frag.appendChild(drawRow(i)); });
    tbody.textContent = "";
    tbody.appendChild(frag);
    $("rows-shown").textContent = String(current.length);
    $("page-info").textContent = L.page.replace("{page}", String(view.page + 1)).replace("{pages}", String(pages));
    $("page-prev").disabled = view.page === 0;
    $("page-next").disabled = view.page >= pages - 1;
    Array.prototype.forEach.call(document.querySelectorAll("#layers-table thead th"), function (th) {
      var key = th.getAttribute("data-key");
      if (key === view.sort) { th.setAttribute("aria-sort", view.dir === "desc" ? "descending" : "ascending"); }
      else { th.removeAttribute("aria-sort"); }
    });
    writeUrl();
  };
  var readUi = function () {
    view.failing = ui.failing.checked; view.kind = ui.kind.value; view.state = ui.state.value;
    view.ftype = ui.ftype.value; view.path = ui.path.value; view.q = ui.q.value.trim().toLowerCase();
  };
  var writeUi = function () {
    ui.failing.checked = view.failing; ui.kind.value = view.kind; ui.state.value = view.state;
    ui.ftype.value = view.ftype; ui.path.value = view.path; ui.q.value = view.q;
  };
  var clearFilters = function () {
    view.failing = false; view.kind = ""; view.state = ""; view.ftype = ""; view.path = ""; view.q = "";
  };
  var showRow = function (i, scroll) {
    // Make row i visible: keep the filters when it passes them, else clear them; open its page.
    if (!matches(i)) { clearFilters(); writeUi(); }
    highlighted = i;
    current = order();
    var pos = current.indexOf(i);
    view.page = Math.floor(Math.max(pos, 0) / PAGE);
    render();
    var tr = $("row-" + i);
    if (tr && scroll) { tr.scrollIntoView({ block: "center" }); }
  };

  if (D && tbody) {
    var params = new URLSearchParams(location.search);
    ["kind", "state", "ftype", "path", "q", "sort", "dir"].forEach(function (k) { view[k] = params.get(k) || ""; });
    view.failing = params.get("failing") === "1";
    view.page = Math.max(0, (parseInt(params.get("page") || "1", 10) || 1) - 1);
    writeUi();
    ["failing", "kind", "state", "ftype", "path"].forEach(function (k) {
      ui[k].addEventListener("change", function () { readUi(); view.page = 0; render(); });
    });
    var timer = 0;
    ui.q.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { readUi(); view.page = 0; render(); }, 180);
    });
    $("page-prev").addEventListener("click", function () { view.page -= 1; render(); });
    $("page-next").addEventListener("click", function () { view.page += 1; render(); });
    Array.prototype.forEach.call(document.querySelectorAll("#layers-table thead th"), function (th) {
      th.querySelector("button").addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        view.dir = (view.sort === key && view.dir === "asc") ? "desc" : "asc";
        view.sort = key;
        view.page = 0;
        render();
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll(".show-rows"), function (btn) {
      btn.addEventListener("click", function () {
        clearFilters();
        view.q = btn.getAttribute("data-search").toLowerCase();
        view.page = 0;
        writeUi();
        render();
        $("layers").scrollIntoView();
      });
    });
    var onHash = function () {
      var m = /^#row-(\d+)$/.exec(location.hash);
      if (m && +m[1] < N) { showRow(+m[1], true); }
    };
    window.addEventListener("hashchange", onHash);
    // a second click on the same row link changes no hash: show the row again anyway
    document.addEventListener("click", function (e) {
      var a = e.target.closest ? e.target.closest("a[href^='#row-']") : null;
      if (a && a.getAttribute("href") === location.hash) { e.preventDefault(); onHash(); }
    });
    if (/^#row-/.test(location.hash)) { onHash(); } else { render(); }
  }

  // "/" focuses the search box (unless typing somewhere already).
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.key === "/" && !e.ctrlKey && !e.metaKey && !e.altKey && tag !== "INPUT" && tag !== "SELECT" && tag !== "TEXTAREA") {
      e.preventDefault();
      if (ui.q) { ui.q.focus(); ui.q.select(); }
    }
  });

  // Chart points: failing ones are circles with data-i (a layer row); the others are one path per series
  // with data-rows. The module name appears on hover (nearest point), a click opens the row.
  var tip = $("plot-tip");
  var pointsOf = function (svg) {
    if (!svg._pts) {
      var pts = [];
      Array.prototype.forEach.call(svg.querySelectorAll("path.dots"), function (path) {
        var idx = path.getAttribute("data-rows").split(",");
        var re = /M([-\d.]+) ([-\d.]+)h0/g, m, k = 0;
        while ((m = re.exec(path.getAttribute("d"))) !== null) { pts.push([+m[1], +m[2], +idx[k]]); k += 1; }
      });
      Array.prototype.forEach.call(svg.querySelectorAll("circle[data-i]"), function (c) {
        pts.push([+c.getAttribute("cx"), +c.getAttribute("cy"), +c.getAttribute("data-i")]);
      });
      svg._pts = pts;
    }
    return svg._pts;
  };
  var nearest = function (svg, e) {
    var ctm = svg.getScreenCTM();
    if (!ctm) { return null; }
    var pt = svg.createSVGPoint();
    pt.x = e.clientX; pt.y = e.clientY;
    var p = pt.matrixTransform(ctm.inverse());
    var best = null, bestD = 36;
    pointsOf(svg).forEach(function (q) {
      var d = (q[0] - p.x) * (q[0] - p.x) + (q[1] - p.y) * (q[1] - p.y);
      if (d < bestD) { bestD = d; best = q; }
    });
    return best;
  };
  Array.prototype.forEach.call(document.querySelectorAll("svg.plot[data-points]"), function (svg) {
    svg.addEventListener("mousemove", function (e) {
      var q = D ? nearest(svg, e) : null;
      if (!q) { tip.hidden = true; return; }
      var r = rows[q[2]];
      tip.textContent = r[col.torch] + " [" + L.states[r[col.state]] + "] " + D.metric_labels[r[col.metric]] + " " +
        fmt(r[col.judged]) + (r[col.ok] ? " ≤ " : " > ") + fmt(r[col.tol]);
      tip.hidden = false;
      tip.style.left = Math.max(0, Math.min(e.pageX + 10, document.documentElement.clientWidth - 300)) + "px";
      tip.style.top = (e.pageY - 34) + "px";
    });
    svg.addEventListener("mouseleave", function () { tip.hidden = true; });
    svg.addEventListener("click", function (e) {
      var q = D ? nearest(svg, e) : null;
      if (q) { location.hash = "#row-" + q[2]; }
    });
  });

  // Fix log: status and text filter.
  var fxStatus = $("fx-status"), fxSearch = $("fx-search");
  if (fxStatus && fxSearch) {
    var fxApply = function () {
      var q = fxSearch.value.trim().toLowerCase();
      Array.prototype.forEach.call(document.querySelectorAll("#fixlog-table tbody tr"), function (tr) {
        tr.hidden = !((!fxStatus.value || tr.getAttribute("data-status") === fxStatus.value) &&
                      (!q || tr.textContent.toLowerCase().indexOf(q) >= 0));
      });
    };
    fxStatus.addEventListener("change", fxApply);
    fxSearch.addEventListener("input", fxApply);
  }

  var setTree = function (open) {
    Array.prototype.forEach.call(document.querySelectorAll(".tree details"), function (d) { d.open = open; });
  };
  var ex = $("tree-expand"), co = $("tree-collapse");
  if (ex) { ex.addEventListener("click", function () { setTree(true); }); }
  if (co) { co.addEventListener("click", function () { setTree(false); }); }
  document.documentElement.setAttribute("data-ready", "1");
  if (window.performance && performance.mark) { performance.mark("report-ready"); }
}, 0);
