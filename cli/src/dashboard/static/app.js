// mesh dashboard: polls api/summary and api/tap every 2 s and renders the
// topology graph, the workload and edge tables and the live tap.
// All data is treated as hostile: text goes in through textContent and
// attributes through setAttribute, never innerHTML.
(function () {
  'use strict';

  var POLL_MS = 2000;
  var FETCH_TIMEOUT_MS = 5000;
  var TAP_MAX = 100;
  var SVG_NS = 'http://www.w3.org/2000/svg';

  var state = {
    summary: null,        // last good summary
    summaryAt: null,      // Date of last good summary
    summaryErr: null,
    tapErr: null,
    tapWorkload: '',
    tapPaused: false,
    rows: new Map(),      // workload id -> {tr, cells, charts}
    timer: null
  };

  // ---------- small helpers ----------

  function $(id) { return document.getElementById(id); }

  function num(v) {
    return (typeof v === 'number' && isFinite(v)) ? v : null;
  }
  function str(v) {
    if (v === null || v === undefined) return '';
    return typeof v === 'string' ? v : String(v);
  }
  function arr(v) { return Array.isArray(v) ? v : []; }
  function obj(v) { return (v && typeof v === 'object' && !Array.isArray(v)) ? v : {}; }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG_NS, tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function rawAttr(v) { return v === null ? '' : String(v); }

  function pad(n, w) { var s = String(n); while (s.length < (w || 2)) s = '0' + s; return s; }
  function hms(d) { return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()); }
  function hmsMs(d) { return hms(d) + '.' + pad(d.getMilliseconds(), 3); }
  function fromUnix(t) { var n = num(t); return n === null ? null : new Date(n * 1000); }

  function fmtPct(s) {
    if (s === null) return '–';
    if (s >= 1) return '100%';
    if (s <= 0) return '0%';
    // Floor so 99.96% is not shown as 100%.
    return (Math.floor(s * 1000) / 10).toFixed(1) + '%';
  }
  function fmtRps(r) {
    if (r === null) return '–';
    if (r >= 1000) return Math.round(r).toLocaleString('en-US');
    if (r > 0 && r < 0.1) return r.toFixed(2);
    return r.toFixed(1);
  }
  function trimNum(s) { return s.indexOf('.') >= 0 ? s.replace(/0+$/, '').replace(/\.$/, '') : s; }
  function fmtMs(ms) {
    if (ms === null) return '–';
    if (ms >= 1000) return trimNum((ms / 1000).toFixed(2)) + ' s';
    if (ms >= 100) return Math.round(ms) + ' ms';
    if (ms >= 10) return trimNum(ms.toFixed(1)) + ' ms';
    if (ms >= 1) return trimNum(ms.toFixed(1)) + ' ms';
    return trimNum(ms.toFixed(2)) + ' ms';
  }
  function fmtBytes(b) {
    if (b === null) return '–';
    if (b < 1024) return b + ' B';
    if (b < 1024 * 1024) return trimNum((b / 1024).toFixed(1)) + ' KiB';
    return trimNum((b / 1048576).toFixed(1)) + ' MiB';
  }

  // Health class from a success ratio; 'idle' when there is no traffic.
  function health(success, rps) {
    if (success === null || (rps !== null && rps <= 0)) return 'idle';
    if (success >= 0.99) return 'ok';
    if (success >= 0.95) return 'warn';
    return 'bad';
  }
  var COLORS = {
    ok: { stroke: '#2e7d32', fill: '#eaf6ec' },
    warn: { stroke: '#b26a00', fill: '#fff4df' },
    bad: { stroke: '#c62828', fill: '#fdecea' },
    idle: { stroke: '#8a94a0', fill: '#f3f5f7' },
    ext: { stroke: '#9aa3ad', fill: '#fafbfc' }
  };

  function truncate(s, n) { return s.length > n ? s.slice(0, n - 1) + '…' : s; }

  // ---------- fetching ----------

  function getJSON(url) {
    var ctl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, FETCH_TIMEOUT_MS) : null;
    return fetch(url, { cache: 'no-store', credentials: 'same-origin', signal: ctl ? ctl.signal : undefined })
      .then(function (res) {
        if (res.ok) return res.json();
        // Show the server's own {"error": "..."} when it sends one.
        return res.text().then(function (body) {
          var detail = '';
          try { var j = JSON.parse(body); if (j && j.error != null) detail = str(j.error); } catch (err) { detail = ''; }
          if (detail.length > 300) detail = detail.slice(0, 300) + '…';
          throw new Error('HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '') + (detail ? ': ' + detail : ''));
        }, function () {
          throw new Error('HTTP ' + res.status);
        });
      })
      .catch(function (e) {
        if (e && e.name === 'AbortError') throw new Error('timed out after ' + FETCH_TIMEOUT_MS / 1000 + ' s');
        throw e;
      })
      .finally(function () { if (timer) clearTimeout(timer); });
  }

  function tapUrl() {
    return state.tapWorkload ? 'api/tap?workload=' + encodeURIComponent(state.tapWorkload) : 'api/tap';
  }

  function poll() {
    clearTimeout(state.timer);
    var started = Date.now();
    var ps = [
      getJSON('api/summary').then(function (s) {
        state.summaryErr = null;
        try {
          render(obj(s));
        } catch (err) {
          state.summaryErr = 'rendering failed: ' + errText(err);
          console.error(err);
        }
      }, function (e) {
        state.summaryErr = 'api/summary: ' + errText(e);
      })
    ];
    if (!state.tapPaused) ps.push(refreshTap());
    Promise.all(ps).catch(function () {}).then(function () {
      showErrors();
      state.timer = setTimeout(poll, Math.max(200, POLL_MS - (Date.now() - started)));
    });
  }

  function refreshTap() {
    var url = tapUrl();
    return getJSON(url).then(function (t) {
      if (url !== tapUrl()) return; // selection changed while in flight
      state.tapErr = null;
      try {
        renderTap(obj(t));
      } catch (err) {
        state.tapErr = 'rendering the tap failed: ' + errText(err);
        console.error(err);
      }
    }, function (e) {
      state.tapErr = 'api/tap: ' + errText(e);
    });
  }

  function errText(e) { return (e && e.message) ? e.message : String(e); }

  function showErrors() {
    var box = $('error');
    var msgs = [];
    if (state.summaryErr) msgs.push(state.summaryErr);
    if (state.tapErr) msgs.push(state.tapErr);
    var st = $('status');
    st.classList.toggle('stale', !!state.summaryErr);
    if (state.summaryErr) st.textContent = state.summaryAt ? 'updated ' + hms(state.summaryAt) + ' · stale' : 'no data';
    if (!msgs.length) { box.hidden = true; box.textContent = ''; return; }
    var text = 'Could not refresh (' + msgs.join('; ') + ').';
    if (state.summaryAt) text += ' Showing data from ' + hms(state.summaryAt) + '.';
    box.textContent = text;
    box.hidden = false;
  }

  // ---------- summary render ----------

  function render(s) {
    var workloads = arr(s.workloads).map(normWorkload).filter(function (w) { return w.id; });
    workloads.sort(function (a, b) { return a.id < b.id ? -1 : a.id > b.id ? 1 : 0; });
    var edges = arr(s.edges).map(normEdge).filter(function (e) { return e.src && e.dst; });
    edges.sort(function (a, b) {
      return a.src < b.src ? -1 : a.src > b.src ? 1 : a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : 0;
    });
    var sum = { generated_at: num(s.generated_at), namespace: s.namespace == null ? null : str(s.namespace),
      window_s: num(s.window_s), workloads: workloads, edges: edges };
    state.summary = sum;
    state.summaryAt = fromUnix(sum.generated_at) || new Date();

    renderHeader(sum);
    renderGraph(sum);
    renderWorkloads(sum);
    renderEdges(sum);
    renderTapSelector(sum);

    var body = document.body;
    body.dataset.renders = String((parseInt(body.dataset.renders || '0', 10) || 0) + 1);
    body.dataset.loaded = '1';
  }

  function normWorkload(w) {
    w = obj(w);
    var ns = str(w.namespace), name = str(w.name);
    var hist = arr(w.history).map(obj).filter(function (p) { return num(p.t) !== null; });
    hist.sort(function (a, b) { return a.t - b.t; });
    var xs = [], rps = [], succ = [], p99 = [];
    for (var i = 0; i < hist.length; i++) {
      if (xs.length && hist[i].t <= xs[xs.length - 1]) continue; // strictly increasing x
      xs.push(hist[i].t);
      rps.push(num(hist[i].rps));
      var sv = num(hist[i].success);
      succ.push(sv === null ? null : sv * 100);
      p99.push(num(hist[i].p99_ms));
    }
    return {
      id: ns ? ns + '/' + name : name, namespace: ns, name: name,
      meshed: num(w.meshed), pods: num(w.pods), rps: num(w.rps), success: num(w.success),
      p50: num(w.p50_ms), p95: num(w.p95_ms), p99: num(w.p99_ms),
      hist: { x: xs, rps: rps, success: succ, p99: p99 }
    };
  }
  function normEdge(e) {
    e = obj(e);
    return { src: str(e.src), dst: str(e.dst), src_identity: str(e.src_identity), dst_identity: str(e.dst_identity),
      mtls: e.mtls === true, rps: num(e.rps), success: num(e.success), p99: num(e.p99_ms) };
  }

  function renderHeader(sum) {
    $('namespace').textContent = sum.namespace ? 'namespace: ' + sum.namespace : 'all namespaces';
    $('window').textContent = sum.window_s !== null ? 'rates over ' + trimNum(sum.window_s.toFixed(1)) + ' s' : '';
    $('window').hidden = sum.window_s === null;
    $('status').textContent = 'updated ' + hms(state.summaryAt);
  }

  // ---------- topology graph ----------

  var NODE_W = 172, MIN_NODE_W = 136, NODE_H = 54, ROW_GAP = 46, MARGIN = 18, MIN_GAP = 128, MAX_COL = 420, LINE_H = 13;

  // Layered layout: cut back-edges with a DFS (roots first, by name), then
  // layer = longest path from a node without callers.
  function layout(ids, edges) {
    var succ = new Map(), hasCaller = new Set();
    ids.forEach(function (id) { succ.set(id, []); });
    edges.forEach(function (e) {
      if (e.src === e.dst) return;
      if (succ.get(e.src).indexOf(e.dst) < 0) succ.get(e.src).push(e.dst);
      hasCaller.add(e.dst);
    });
    succ.forEach(function (l) { l.sort(); });

    var color = new Map(), back = new Set();
    function dfs(root) {
      var stack = [[root, 0]];
      color.set(root, 1);
      while (stack.length) {
        var top = stack[stack.length - 1], kids = succ.get(top[0]);
        if (top[1] >= kids.length) { color.set(top[0], 2); stack.pop(); continue; }
        var k = kids[top[1]++], c = color.get(k) || 0;
        if (c === 1) back.add(top[0] + '\u0000' + k);
        else if (c === 0) { color.set(k, 1); stack.push([k, 0]); }
      }
    }
    ids.forEach(function (id) { if (!hasCaller.has(id) && !color.get(id)) dfs(id); });
    ids.forEach(function (id) { if (!color.get(id)) dfs(id); });

    // Longest path on the remaining DAG (Kahn's order).
    var indeg = new Map(), layer = new Map();
    ids.forEach(function (id) { indeg.set(id, 0); layer.set(id, 0); });
    succ.forEach(function (l, u) { l.forEach(function (v) { if (!back.has(u + '\u0000' + v)) indeg.set(v, indeg.get(v) + 1); }); });
    var queue = ids.filter(function (id) { return indeg.get(id) === 0; });
    for (var qi = 0; qi < queue.length; qi++) {
      var u = queue[qi];
      succ.get(u).forEach(function (v) {
        if (back.has(u + '\u0000' + v)) return;
        layer.set(v, Math.max(layer.get(v), layer.get(u) + 1));
        indeg.set(v, indeg.get(v) - 1);
        if (indeg.get(v) === 0) queue.push(v);
      });
    }
    return { layer: layer, back: back };
  }

  // A polyline with rounded corners as an SVG path.
  function rounded(pts, r) {
    function f(n) { return Math.round(n * 10) / 10; }
    var d = 'M' + f(pts[0][0]) + ',' + f(pts[0][1]);
    for (var i = 1; i < pts.length - 1; i++) {
      var a = pts[i - 1], p = pts[i], b = pts[i + 1];
      var l1 = Math.hypot(p[0] - a[0], p[1] - a[1]), l2 = Math.hypot(b[0] - p[0], b[1] - p[1]);
      var rr = Math.min(r, l1 / 2, l2 / 2);
      if (rr < 0.5) { d += ' L' + f(p[0]) + ',' + f(p[1]); continue; }
      d += ' L' + f(p[0] + (a[0] - p[0]) * rr / l1) + ',' + f(p[1] + (a[1] - p[1]) * rr / l1) +
        ' Q' + f(p[0]) + ',' + f(p[1]) + ' ' + f(p[0] + (b[0] - p[0]) * rr / l2) + ',' + f(p[1] + (b[1] - p[1]) * rr / l2);
    }
    var z = pts[pts.length - 1];
    return d + ' L' + f(z[0]) + ',' + f(z[1]);
  }

  function renderGraph(sum) {
    var host = $('graph');
    var byId = new Map();
    sum.workloads.forEach(function (w) { if (!byId.has(w.id)) byId.set(w.id, w); });
    var ids = new Set(byId.keys());
    sum.edges.forEach(function (e) { ids.add(e.src); ids.add(e.dst); });
    ids = Array.from(ids).sort();

    if (!ids.length) {
      host.replaceChildren(el('p', 'empty', 'No meshed workloads found.'));
      return;
    }

    var lay = layout(ids, sum.edges);
    var isBack = function (e) { return lay.back.has(e.src + '\u0000' + e.dst); };
    var layers = [];
    ids.forEach(function (id) {
      var l = lay.layer.get(id);
      (layers[l] = layers[l] || []).push(id); // ids are sorted, so each layer is ordered by name
    });
    var maxRows = 0;
    layers.forEach(function (l) { maxRows = Math.max(maxRows, l.length); });

    var namespaces = new Set();
    sum.workloads.forEach(function (w) { namespaces.add(w.namespace); });
    var multiNs = namespaces.size > 1;

    var avail = Math.max((host.clientWidth || 1300) - 2, 600);
    var nL = layers.length;
    // Shrink the nodes a little before the drawing gets wider than the page.
    var nodeW = Math.round(Math.min(NODE_W, Math.max(MIN_NODE_W, (avail - 2 * MARGIN - (nL - 1) * MIN_GAP) / nL)));
    var col = nL > 1 ? Math.min(MAX_COL, Math.max(nodeW + MIN_GAP, (avail - 2 * MARGIN - nodeW) / (nL - 1))) : 0;
    var contentW = nodeW + col * (nL - 1);
    var width = Math.max(avail, contentW + 2 * MARGIN);
    var x0 = (width - contentW) / 2;
    var top = MARGIN + 16;
    var innerH = maxRows * NODE_H + (maxRows - 1) * ROW_GAP;

    var pos = new Map();
    var span = [];
    layers.forEach(function (l, li) {
      var h = l.length * NODE_H + (l.length - 1) * ROW_GAP;
      var y = top + (innerH - h) / 2;
      l.forEach(function (id, i) { pos.set(id, { x: x0 + li * col, y: y + i * (NODE_H + ROW_GAP) }); });
      span[li] = { top: y, bottom: y + h };
    });
    function colX(l) { return x0 + l * col; }

    // Ports: spread the ends of forward edges along a node's side, ordered by
    // the other end's y, so parallel arrows do not sit on top of each other.
    var outs = new Map(), ins = new Map();
    sum.edges.forEach(function (e, i) {
      if (e.src === e.dst || isBack(e)) return;
      (outs.get(e.src) || outs.set(e.src, []).get(e.src)).push(i);
      (ins.get(e.dst) || ins.set(e.dst, []).get(e.dst)).push(i);
    });
    var portOut = new Map(), portIn = new Map();
    function assign(map, ports, other) {
      map.forEach(function (list, id) {
        list.sort(function (a, b) { return pos.get(other(sum.edges[a])).y - pos.get(other(sum.edges[b])).y || a - b; });
        var p = pos.get(id);
        list.forEach(function (ei, k) { ports.set(ei, p.y + NODE_H * (k + 1) / (list.length + 1)); });
      });
    }
    assign(outs, portOut, function (e) { return e.dst; });
    assign(ins, portIn, function (e) { return e.src; });

    // Route every edge. Forward edges are curves from the right side of the
    // caller to the left side of the callee; one that would cross a node of a
    // layer in between goes around those layers. Back-edges (cut cycles) run
    // under the nodes from bottom to bottom; self-calls are loops on top.
    var minY = top, maxY = top + innerH;
    var lanes = new Map();
    function lane(key, step) { var n = lanes.get(key) || 0; lanes.set(key, n + 1); return n * step; }
    var routes = sum.edges.map(function (e, i) {
      var a = pos.get(e.src), b = pos.get(e.dst);
      var d, la = lay.layer.get(e.src), lb = lay.layer.get(e.dst);
      if (e.src === e.dst) {
        var sx = a.x + nodeW - 48, ex = a.x + nodeW - 16;
        d = 'M' + sx + ',' + a.y + ' C' + (sx - 8) + ',' + (a.y - 36) + ' ' + (ex + 22) + ',' + (a.y - 36) + ' ' + ex + ',' + a.y;
        minY = Math.min(minY, a.y - 30);
      } else if (isBack(e)) {
        // Under (or over, whichever crosses fewer nodes) the layers in between;
        // leave and enter through the gaps beside the nodes when other nodes of
        // the same layer are in the way.
        var ia = layers[la].indexOf(e.src), ib = layers[lb].indexOf(e.dst);
        var down = (layers[la].length - 1 - ia) + (layers[lb].length - 1 - ib) <= ia + ib;
        var ext = down ? -Infinity : Infinity;
        for (var l = lb; l <= la; l++) ext = down ? Math.max(ext, span[l].bottom) : Math.min(ext, span[l].top);
        var yb = down ? ext + 22 + lane('below', 8) : ext - 22 - lane('above', 8);
        var sgn = down ? 1 : -1, pts = [];
        if (down ? ia === layers[la].length - 1 : ia === 0) {
          var sx = a.x + nodeW / 2 - 12;
          pts.push([sx, down ? a.y + NODE_H : a.y], [sx, yb]);
        } else {
          var cx1 = a.x - 14 - lane('left' + la, 6), sy = a.y + NODE_H / 2 + 12 * sgn;
          pts.push([a.x, sy], [cx1, sy], [cx1, yb]);
        }
        if (down ? ib === layers[lb].length - 1 : ib === 0) {
          var tx = b.x + nodeW / 2 + 12;
          pts.push([tx, yb], [tx, down ? b.y + NODE_H : b.y]);
        } else {
          var cx2 = b.x + nodeW + 14 + lane('right' + lb, 6), ty = b.y + NODE_H / 2 + 12 * sgn;
          pts.push([cx2, yb], [cx2, ty], [b.x + nodeW, ty]);
        }
        d = rounded(pts, 12);
        minY = Math.min(minY, yb); maxY = Math.max(maxY, yb);
      } else {
        var px = a.x + nodeW, py = portOut.get(i), qx = b.x, qy = portIn.get(i);
        var blocked = false, above = Infinity, below = -Infinity;
        for (var m = la + 1; m < lb; m++) {
          var cx = colX(m) + nodeW / 2, y = py + (qy - py) * (cx - px) / (qx - px);
          layers[m].forEach(function (id) {
            var p = pos.get(id);
            if (y > p.y - 12 && y < p.y + NODE_H + 12) blocked = true;
          });
          above = Math.min(above, span[m].top - 24);
          below = Math.max(below, span[m].bottom + 24);
        }
        if (!blocked) {
          var dx = Math.max(40, (qx - px) / 2);
          d = 'M' + px + ',' + py + ' C' + (px + dx) + ',' + py + ' ' + (qx - dx) + ',' + qy + ' ' + qx + ',' + qy;
        } else {
          var mid = (py + qy) / 2;
          var up = Math.abs(above - mid) <= Math.abs(below - mid);
          var wy = up ? above - lane('above', 8) : below + lane('below', 8);
          var xs = colX(la + 1) - 20, xe = colX(lb - 1) + nodeW + 20;
          var d1 = Math.max(24, (xs - px) / 2), d2 = Math.max(24, (qx - xe) / 2);
          d = 'M' + px + ',' + py + ' C' + (px + d1) + ',' + py + ' ' + (xs - d1) + ',' + wy + ' ' + xs + ',' + wy +
            ' L' + xe + ',' + wy + ' C' + (xe + d2) + ',' + wy + ' ' + (qx - d2) + ',' + qy + ' ' + qx + ',' + qy;
          minY = Math.min(minY, wy); maxY = Math.max(maxY, wy);
        }
      }
      return d;
    });

    var vy = Math.min(0, minY - 34);
    var height = Math.max(top + innerH + MARGIN, maxY + 34) - vy;

    var root = svg('svg', { width: width, height: height, viewBox: '0 ' + vy + ' ' + width + ' ' + height,
      role: 'img', 'aria-label': 'service topology', 'class': 'topo' });
    var defs = svg('defs');
    ['ok', 'warn', 'bad', 'idle'].forEach(function (h) {
      var m = svg('marker', { id: 'arrow-' + h, viewBox: '0 0 10 10', refX: 9, refY: 5,
        markerWidth: 10, markerHeight: 10, orient: 'auto-start-reverse', markerUnits: 'userSpaceOnUse' });
      m.appendChild(svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: COLORS[h].stroke }));
      defs.appendChild(m);
    });
    root.appendChild(defs);

    var edgeLayer = svg('g', { 'class': 'edges' });
    var nodeLayer = svg('g', { 'class': 'nodes' });
    var labels = [];

    sum.edges.forEach(function (e, i) {
      var hc = health(e.success, e.rps);
      var g = svg('g', { 'class': 'edge ' + hc, 'data-src': e.src, 'data-dst': e.dst, 'data-rps': rawAttr(e.rps),
        'data-success': rawAttr(e.success), 'data-p99': rawAttr(e.p99), 'data-mtls': e.mtls ? 'true' : 'false' });
      var idle = e.success === null && (e.rps === null || e.rps <= 0);
      var line1 = idle ? 'no traffic' : fmtPct(e.success) + ' · ' + fmtRps(e.rps) + ' rps';
      var line2 = idle ? '' : 'p99 ' + fmtMs(e.p99);
      var text = line2 ? line1 + ' · ' + line2 : line1;
      g.appendChild(svg('title', null, e.src + ' → ' + e.dst + '\n' + text +
        '\nclient: ' + (e.src_identity || '–') + '\nserver: ' + (e.dst_identity || '–') + '\nmTLS: ' + (e.mtls ? 'yes' : 'no')));
      var path = svg('path', { d: routes[i], fill: 'none', stroke: COLORS[hc].stroke, 'stroke-width': edgeWidth(e.rps),
        'marker-end': 'url(#arrow-' + hc + ')', 'class': 'edge-path' + (e.mtls ? '' : ' plain') });
      g.appendChild(path);
      var lg = svg('g', { 'class': 'edge-label ' + hc });
      var t = svg('text', { x: 0, y: 0, 'text-anchor': 'middle' }, text);
      lg.appendChild(t);
      var lock = null;
      if (e.mtls) {
        lock = svg('g', { 'class': 'lock' });
        lock.appendChild(svg('title', null, 'mTLS'));
        lock.appendChild(svg('path', { d: 'M2.5,5 V3.5 a3,3 0 0 1 6,0 V5', fill: 'none', 'stroke-width': 1.4 }));
        lock.appendChild(svg('rect', { x: 1, y: 5, width: 9, height: 7, rx: 1.5 }));
        lg.appendChild(lock);
      }
      g.appendChild(lg);
      edgeLayer.appendChild(g);
      var modes = [[text]];
      if (!idle) modes.push([line1, line2], [fmtPct(e.success), fmtRps(e.rps) + ' rps', line2]);
      labels.push({ i: i, e: e, path: path, g: lg, t: t, lock: lock, text: text, modes: modes });
    });

    var boxes = [];
    ids.forEach(function (id) {
      var p = pos.get(id), w = byId.get(id);
      var kind = w ? health(w.success, w.rps) : 'ext';
      var g = svg('g', { 'class': 'node ' + kind + (w ? '' : ' external'), 'data-id': id,
        transform: 'translate(' + p.x + ',' + p.y + ')' });
      var label = w ? (multiNs ? w.id : w.name || w.id) : id;
      var sub;
      if (w) {
        sub = (w.meshed !== null ? w.meshed : '?') + '/' + (w.pods !== null ? w.pods : '?') + ' meshed · ' + fmtRps(w.rps) + ' rps';
      } else {
        sub = 'not meshed';
      }
      g.appendChild(svg('title', null, w
        ? w.id + '\n' + sub + '\nsuccess ' + fmtPct(w.success) + ' · p99 ' + fmtMs(w.p99)
        : id + ' (not a meshed workload)'));
      g.appendChild(svg('rect', { width: nodeW, height: NODE_H, rx: 9, ry: 9, fill: COLORS[kind].fill,
        stroke: COLORS[kind].stroke, 'stroke-width': w ? 2 : 1.5, 'stroke-dasharray': w ? 'none' : '5 4' }));
      if (w) g.appendChild(svg('rect', { x: 4, y: 7, width: 4, height: NODE_H - 14, rx: 2, fill: COLORS[kind].stroke, 'class': 'bar' }));
      g.appendChild(svg('text', { x: nodeW / 2 + 4, y: 23, 'text-anchor': 'middle', 'class': 'node-name' }, truncate(label, Math.floor((nodeW - 20) / 8.2))));
      g.appendChild(svg('text', { x: nodeW / 2 + 4, y: 41, 'text-anchor': 'middle', 'class': 'node-sub' }, truncate(sub, Math.floor((nodeW - 12) / 5.9))));
      nodeLayer.appendChild(g);
      boxes.push({ x: p.x - 3, y: p.y - 3, w: nodeW + 6, h: NODE_H + 6 });
    });

    root.appendChild(edgeLayer);
    root.appendChild(nodeLayer);
    host.replaceChildren(root);

    placeLabels(labels, boxes, { x: 2, y: vy + 2, w: width - 4, h: height - 4 });
  }

  // Place edge labels once the SVG is in the document (text can be measured):
  // try points along the edge, above then below it, on one line then on two,
  // and take the first spot that overlaps no node and no other label. A label
  // that fits nowhere is hidden; the edge's tooltip and the edges table still
  // carry its numbers. Busier edges are placed first.
  function placeLabels(labels, boxes, bounds) {
    function measure(node, text) {
      var w = 0;
      node.textContent = text;
      try { w = node.getComputedTextLength(); } catch (err) { w = 0; }
      return w || text.length * 6.2;
    }
    function free(b) {
      if (b.x < bounds.x || b.y < bounds.y || b.x + b.w > bounds.x + bounds.w || b.y + b.h > bounds.y + bounds.h) return false;
      for (var k = 0; k < boxes.length; k++) {
        var o = boxes[k];
        if (b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h) return false;
      }
      return true;
    }
    var order = labels.slice().sort(function (a, b) { return (b.e.rps || 0) - (a.e.rps || 0) || a.i - b.i; });
    var FRACTIONS = [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.12, 0.88];
    order.forEach(function (L) {
      var lockW = L.lock ? 15 : 0;
      var modes = L.modes.map(function (lines) {
        var ws = lines.map(function (s) { return measure(L.t, s); });
        return { lines: lines, ws: ws, w: Math.max.apply(null, ws) + lockW, h: lines.length * LINE_H + 2 };
      });
      var len = 0;
      try { len = L.path.getTotalLength(); } catch (err) { len = 0; }
      var chosen = null;
      for (var f = 0; f < FRACTIONS.length && !chosen && len > 0; f++) {
        var pt = L.path.getPointAtLength(len * FRACTIONS[f]);
        for (var mi = 0; mi < modes.length && !chosen; mi++) {
          for (var side = 0; side < 2 && !chosen; side++) {
            var md = modes[mi];
            var b = { x: pt.x - md.w / 2, y: side === 0 ? pt.y - 5 - md.h : pt.y + 5, w: md.w, h: md.h };
            if (free(b)) chosen = { mode: md, box: b };
          }
        }
      }
      L.t.textContent = '';
      if (!chosen) {
        // Fits nowhere: hidden; the edge's tooltip and the edges table carry the numbers.
        L.t.textContent = L.text;
        L.g.setAttribute('display', 'none');
        L.g.setAttribute('class', L.g.getAttribute('class') + ' hidden');
        return;
      }
      boxes.push(chosen.box);
      var bx = chosen.box, textX = bx.x + lockW + (bx.w - lockW) / 2, baseY = bx.y + 11;
      L.t.setAttribute('x', textX);
      L.t.setAttribute('y', baseY);
      if (chosen.mode.lines.length === 1) {
        L.t.textContent = chosen.mode.lines[0];
      } else {
        chosen.mode.lines.forEach(function (s, k) {
          L.t.appendChild(svg('tspan', { x: textX, dy: k ? LINE_H : 0 }, s));
        });
      }
      if (L.lock) L.lock.setAttribute('transform', 'translate(' + (textX - chosen.mode.ws[0] / 2 - 15) + ',' + (baseY - 10) + ')');
    });
  }

  function edgeWidth(rps) {
    if (rps === null || rps <= 0) return 1.5;
    return Math.min(5, 1.6 + Math.log10(1 + rps) * 1.2).toFixed(2);
  }

  // ---------- workload table ----------

  var SPARKS = [
    { key: 'rps', color: '#2563eb', fill: 'rgba(37,99,235,0.12)', title: 'requests per second', range: null },
    { key: 'success', color: '#2e7d32', fill: 'rgba(46,125,50,0.10)', title: 'success rate %',
      range: function (u, min, max) { return [Math.min(isFinite(min) && min !== null ? min : 95, 95), 100.5]; } },
    { key: 'p99', color: '#7c3aed', fill: 'rgba(124,58,237,0.10)', title: 'p99 latency ms', range: null }
  ];
  var SPARK_W = 104, SPARK_H = 30;

  function setCell(td, value, text) {
    td.setAttribute('data-value', rawAttr(value));
    if (td.textContent !== text) td.textContent = text;
  }

  function makeRow(w) {
    var tr = el('tr');
    tr.setAttribute('data-id', w.id);
    var cells = {};
    ['name', 'meshed', 'success', 'rps', 'p50', 'p95', 'p99'].forEach(function (f) {
      var td = el('td', f === 'name' ? 'name' : 'num');
      td.setAttribute('data-field', f);
      cells[f] = td;
      tr.appendChild(td);
    });
    var charts = {};
    SPARKS.forEach(function (sp) {
      var td = el('td', 'spark');
      td.setAttribute('data-field', 'spark-' + sp.key);
      var box = el('div', 'spark-box');
      box.title = sp.title + ' (history)';
      td.appendChild(box);
      tr.appendChild(td);
      charts[sp.key] = makeSpark(box, sp);
    });
    return { tr: tr, cells: cells, charts: charts };
  }

  function makeSpark(box, sp) {
    if (typeof uPlot !== 'function') return null;
    var yScale = { auto: true };
    if (sp.range) yScale.range = sp.range;
    else yScale.range = function (u, min, max) {
      if (!isFinite(min) || !isFinite(max) || min === null || max === null) return [0, 1];
      var hi = max > 0 ? max * 1.1 : 1;
      return [0, hi];
    };
    var opts = {
      width: SPARK_W, height: SPARK_H, pxAlign: 0,
      legend: { show: false }, cursor: { show: false }, select: { show: false },
      scales: { x: { time: false }, y: yScale },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: sp.color, fill: sp.fill, width: 1.5, points: { show: false }, spanGaps: false }],
      padding: [3, 2, 2, 2]
    };
    try {
      return new uPlot(opts, [[], []], box);
    } catch (err) {
      return null;
    }
  }

  function renderWorkloads(sum) {
    var tbody = $('workloads').tBodies[0];
    var seen = new Set();
    sum.workloads.forEach(function (w) {
      if (seen.has(w.id)) return; // duplicate ids: first wins
      seen.add(w.id);
      var row = state.rows.get(w.id);
      if (!row) { row = makeRow(w); state.rows.set(w.id, row); }
      var c = row.cells;
      setCell(c.name, w.id, w.id);
      c.name.title = w.id;
      var meshedText = (w.meshed !== null ? w.meshed : '?') + '/' + (w.pods !== null ? w.pods : '?');
      setCell(c.meshed, w.meshed, meshedText);
      c.meshed.setAttribute('data-pods', rawAttr(w.pods));
      c.meshed.className = 'num' + (w.meshed !== null && w.pods !== null && w.meshed < w.pods ? ' partial' : '');
      setCell(c.success, w.success, fmtPct(w.success));
      c.success.className = 'num health ' + health(w.success, w.rps);
      setCell(c.rps, w.rps, fmtRps(w.rps));
      setCell(c.p50, w.p50, fmtMs(w.p50));
      setCell(c.p95, w.p95, fmtMs(w.p95));
      setCell(c.p99, w.p99, fmtMs(w.p99));
      SPARKS.forEach(function (sp) {
        var ch = row.charts[sp.key];
        if (ch) ch.setData([w.hist.x, w.hist[sp.key]]);
      });
      tbody.appendChild(row.tr); // appendChild moves existing rows into sorted order
    });
    state.rows.forEach(function (row, id) {
      if (seen.has(id)) return;
      SPARKS.forEach(function (sp) { if (row.charts[sp.key]) row.charts[sp.key].destroy(); });
      row.tr.remove();
      state.rows.delete(id);
    });
    var hint = $('workloads-hint');
    hint.textContent = sum.workloads.length ? '' : 'no workloads';
  }

  // ---------- edges table ----------

  function td(field, text, value, cls) {
    var c = el('td', cls || null, text);
    c.setAttribute('data-field', field);
    if (value !== undefined) c.setAttribute('data-value', rawAttr(value));
    return c;
  }

  function renderEdges(sum) {
    var rows = sum.edges.map(function (e) {
      var tr = el('tr');
      tr.setAttribute('data-src', e.src);
      tr.setAttribute('data-dst', e.dst);
      tr.appendChild(td('src', e.src, undefined, 'name'));
      tr.appendChild(td('dst', e.dst, undefined, 'name'));
      tr.appendChild(td('src_identity', e.src_identity || '–', undefined, 'ident'));
      tr.appendChild(td('dst_identity', e.dst_identity || '–', undefined, 'ident'));
      var m = td('mtls', e.mtls ? 'yes' : 'no', e.mtls ? 'true' : 'false', e.mtls ? 'mtls yes' : 'mtls no');
      tr.appendChild(m);
      tr.appendChild(td('success', fmtPct(e.success), e.success, 'num health ' + health(e.success, e.rps)));
      tr.appendChild(td('rps', fmtRps(e.rps), e.rps, 'num'));
      tr.appendChild(td('p99', fmtMs(e.p99), e.p99, 'num'));
      return tr;
    });
    if (!rows.length) {
      var tr = el('tr', 'empty-row');
      var c = el('td', 'empty', 'No traffic between workloads in this window.');
      c.colSpan = 8;
      tr.appendChild(c);
      rows.push(tr);
    }
    $('edges').tBodies[0].replaceChildren.apply($('edges').tBodies[0], rows);
  }

  // ---------- tap ----------

  function renderTapSelector(sum) {
    var sel = $('tap-workload');
    var want = [''].concat(sum.workloads.map(function (w) { return w.id; }));
    if (state.tapWorkload && want.indexOf(state.tapWorkload) < 0) want.push(state.tapWorkload);
    var have = Array.prototype.map.call(sel.options, function (o) { return o.value; });
    if (have.join('\u0000') === want.join('\u0000')) return;
    var opts = want.map(function (v) {
      var o = el('option', null, v === '' ? 'all workloads' : v);
      o.value = v;
      return o;
    });
    sel.replaceChildren.apply(sel, opts);
    sel.value = state.tapWorkload;
  }

  function statusClass(status, grpc) {
    if (grpc !== null && grpc !== 0) return 'bad';
    if (status === null) return 'idle';
    if (status >= 500) return 'bad';
    if (status >= 400) return 'warn';
    if (status >= 300) return 'redirect';
    if (status >= 100) return 'ok';
    return 'idle';
  }

  function renderTap(t) {
    var status = $('tap-status');
    var err = t.error == null ? '' : str(t.error);
    status.textContent = err ? 'tap error: ' + err : (t.active === false ? 'tap inactive' : '');
    status.className = 'hint' + (err ? ' tap-err' : '');

    var events = arr(t.events).slice(-TAP_MAX).reverse();
    var rows = events.map(function (ev) {
      ev = obj(ev);
      var tr = el('tr', 'tap-row');
      var d = fromUnix(ev.timestamp);
      tr.appendChild(td('time', d ? hmsMs(d) : '–', num(ev.timestamp), 'mono'));
      var dir = str(ev.direction);
      tr.appendChild(td('direction', dir || '–', undefined, 'dir ' + (dir === 'inbound' ? 'in' : dir === 'outbound' ? 'out' : '')));
      var from = str(ev.src_workload) || str(ev.src_addr) || '?';
      var to = str(ev.dst_workload) || str(ev.dst_addr) || '?';
      var ft = td('route', from + ' → ' + to, undefined, 'name');
      ft.title = 'src ' + (str(ev.src_identity) || '–') + ' (' + str(ev.src_addr) + ')\ndst ' +
        (str(ev.dst_identity) || '–') + ' (' + str(ev.dst_addr) + ')' + (ev.route != null ? '\nroute ' + str(ev.route) : '');
      tr.appendChild(ft);
      tr.appendChild(td('method', str(ev.method) || '–', undefined, 'mono'));
      var auth = td('authority', str(ev.authority) || '–', undefined, 'mono clip');
      auth.title = str(ev.authority);
      tr.appendChild(auth);
      var path = td('path', str(ev.path) || '–', undefined, 'mono clip');
      path.title = str(ev.path);
      tr.appendChild(path);
      var st = num(ev.status), gs = num(ev.grpc_status);
      var stText = st === null ? '–' : String(st);
      if (gs !== null) stText += ' · grpc ' + gs;
      tr.appendChild(td('status', stText, st, 'num status ' + statusClass(st, gs)));
      var lat = num(ev.latency_ms);
      tr.appendChild(td('latency', fmtMs(lat), lat, 'num'));
      var by = num(ev.response_bytes);
      tr.appendChild(td('bytes', fmtBytes(by), by, 'num'));
      tr.appendChild(td('tls', ev.tls === true ? 'yes' : ev.tls === false ? 'no' : '–', ev.tls === true ? 'true' : ev.tls === false ? 'false' : null,
        ev.tls === true ? 'mtls yes' : 'mtls no'));
      var pe = ev.proxy_error == null ? '' : str(ev.proxy_error);
      var perr = td('proxy_error', pe, undefined, pe ? 'perr' : '');
      if (pe) perr.title = pe;
      tr.appendChild(perr);
      return tr;
    });
    var tbody = $('tap').tBodies[0];
    if (!rows.length) {
      var tr = el('tr', 'empty-row');
      var c = el('td', 'empty', state.tapWorkload ? 'No requests seen for ' + state.tapWorkload + ' yet.' : 'No requests seen yet.');
      c.colSpan = 11;
      tr.appendChild(c);
      rows.push(tr);
    }
    tbody.replaceChildren.apply(tbody, rows);
  }

  // ---------- wiring ----------

  function init() {
    $('tap-workload').addEventListener('change', function (ev) {
      state.tapWorkload = ev.target.value;
      $('tap').tBodies[0].replaceChildren();
      refreshTap().then(showErrors);
    });
    $('tap-pause').addEventListener('click', function (ev) {
      state.tapPaused = !state.tapPaused;
      ev.target.textContent = state.tapPaused ? 'resume' : 'pause';
      ev.target.classList.toggle('on', state.tapPaused);
      if (!state.tapPaused) refreshTap().then(showErrors);
    });
    var resizeTimer = null;
    window.addEventListener('resize', function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () { if (state.summary) renderGraph(state.summary); }, 150);
    });
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
