/* Panopticon dashboard.
 *
 * Two parts:
 *  - the live pipeline, polled from GET /status every 2 s;
 *  - stored metrics, from /api/v1/* every 10 s and whenever a filter changes.
 *
 * A failed request shows in the error banner and polling goes on; nothing here throws out of
 * a timer or promise, and nothing logs to the console in normal operation.
 */
(function () {
  'use strict';

  var STATUS_INTERVAL_MS = 2000;
  var METRICS_INTERVAL_MS = 10000;
  var REQUEST_TIMEOUT_MS = 8000;
  var THROUGHPUT_SPAN_MS = 120000;
  var MAX_CHARTED_PODS = 20;
  var ACTORS = ['consumer', 'validator', 'writer'];
  var ACTOR_TITLES = { consumer: 'Consumer', validator: 'Validator', writer: 'Writer' };

  // Window → span, bucket (at most ~200 points per series) and x-axis tick spacing.
  var WINDOWS = {
    '15m': { span: 15 * 60e3, bucket: '15s', bucketMs: 15e3, tick: 2 * 60e3 },
    '1h': { span: 60 * 60e3, bucket: '1m', bucketMs: 60e3, tick: 10 * 60e3 },
    '6h': { span: 6 * 60 * 60e3, bucket: '5m', bucketMs: 5 * 60e3, tick: 60 * 60e3 },
    '24h': { span: 24 * 60 * 60e3, bucket: '15m', bucketMs: 15 * 60e3, tick: 3 * 60 * 60e3 }
  };

  var PALETTE = [
    '#58a6ff', '#3fb950', '#f0883e', '#db61a2', '#a371f7', '#e3b341', '#39c5cf', '#ff7b72',
    '#7ee787', '#d2a8ff', '#79c0ff', '#ffa657', '#56d364', '#f778ba', '#a5d6ff', '#bb8009',
    '#2ea0a8', '#ec6547', '#8b949e', '#c297ff'
  ];

  // ---------------------------------------------------------------- helpers

  function $(id) { return document.getElementById(id); }

  function setText(el, text) {
    if (typeof el === 'string') { el = $(el); }
    if (el && el.textContent !== text) { el.textContent = text; }
  }

  function isNum(v) { return typeof v === 'number' && isFinite(v); }

  var intFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  var decFormat = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });

  function fmtInt(v) { return isNum(v) ? intFormat.format(v) : '\u2014'; }
  function fmtDec(v) { return isNum(v) ? decFormat.format(v) : '\u2014'; }
  function fmtRate(v) { return isNum(v) ? decFormat.format(v) + ' /s' : '\u2014'; }

  function pad2(n) { return (n < 10 ? '0' : '') + n; }

  function fmtClock(ms, withSeconds) {
    var d = new Date(ms);
    var s = pad2(d.getHours()) + ':' + pad2(d.getMinutes());
    return withSeconds ? s + ':' + pad2(d.getSeconds()) : s;
  }

  function fmtDateTime(ms) {
    var d = new Date(ms);
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + fmtClock(ms, true);
  }

  function parseTime(v) {
    if (isNum(v)) { return v; }
    if (typeof v !== 'string') { return NaN; }
    return Date.parse(v);
  }

  function fmtAgo(ms) {
    if (!isNum(ms)) { return '\u2014'; }
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) { return s + ' s ago'; }
    if (s < 3600) { return Math.floor(s / 60) + ' min ago'; }
    if (s < 86400) { return Math.floor(s / 3600) + ' h ago'; }
    return Math.floor(s / 86400) + ' d ago';
  }

  function setBadge(el, text, level) {
    if (typeof el === 'string') { el = $(el); }
    if (!el) { return; }
    setText(el, text);
    var cls = 'badge badge-' + level;
    if (el.className !== cls) { el.className = cls; }
  }

  function cell(text, className) {
    var td = document.createElement('td');
    td.textContent = text;
    if (className) { td.className = className; }
    return td;
  }

  function replaceRows(tbody, rows) {
    if (!tbody) { return; }
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    for (var i = 0; i < rows.length; i++) { tbody.appendChild(rows[i]); }
  }

  function emptyRow(colspan, text) {
    var tr = document.createElement('tr');
    tr.className = 'empty';
    var td = cell(text, 'muted');
    td.colSpan = colspan;
    tr.appendChild(td);
    return tr;
  }

  // ---------------------------------------------------------------- errors

  var errors = new Map(); // source → { message, since }

  function renderErrors() {
    var banner = $('error-banner');
    var list = $('error-list');
    if (!banner || !list) { return; }
    var items = [];
    errors.forEach(function (e) {
      var li = document.createElement('li');
      li.textContent = e.message + ' (since ' + fmtClock(e.since, true) + ', retrying)';
      items.push(li);
    });
    replaceRows(list, items);
    banner.hidden = items.length === 0;
  }

  function reportError(source, err) {
    var message = err && err.message ? err.message : String(err);
    var prev = errors.get(source);
    if (prev && prev.message === message) { return; }
    errors.set(source, { message: message, since: prev ? prev.since : Date.now() });
    renderErrors();
  }

  function clearError(source) {
    if (errors.delete(source)) { renderErrors(); }
  }

  // ---------------------------------------------------------------- requests

  function describeFailure(path, err) {
    if (err && err.name === 'AbortError') {
      return 'GET ' + path + ': no answer within ' + REQUEST_TIMEOUT_MS / 1000 + ' s';
    }
    return 'GET ' + path + ': ' + (err && err.message ? err.message : 'network error');
  }

  /** GETs `path` and resolves to its JSON body; rejects with an Error whose message says why. */
  function getJSON(path) {
    var controller = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, REQUEST_TIMEOUT_MS) : null;
    var options = { headers: { Accept: 'application/json' }, cache: 'no-store' };
    if (controller) { options.signal = controller.signal; }

    return fetch(path, options)
      .then(function (res) {
        return res.text().then(function (body) {
          var data = null;
          try { data = body ? JSON.parse(body) : null; } catch (e) { data = null; }
          if (!res.ok) {
            var msg = 'GET ' + path + ': HTTP ' + res.status;
            if (data && typeof data.error === 'string') {
              msg += ' \u2014 ' + data.error;
              if (data.field) { msg += ' (field: ' + data.field + ')'; }
            } else if (res.statusText) {
              msg += ' ' + res.statusText;
            }
            throw new Error(msg);
          }
          if (data === null || typeof data !== 'object') {
            throw new Error('GET ' + path + ': the answer is not JSON');
          }
          return data;
        });
      }, function (err) {
        throw new Error(describeFailure(path, err));
      })
      .then(function (data) {
        if (timer) { clearTimeout(timer); }
        return data;
      }, function (err) {
        if (timer) { clearTimeout(timer); }
        if (err && err.name === 'AbortError') { throw new Error(describeFailure(path, err)); }
        throw err;
      });
  }

  // ---------------------------------------------------------------- charts

  var hasChart = typeof window.Chart === 'function';

  if (hasChart) {
    window.Chart.defaults.color = '#8c99aa';
    window.Chart.defaults.borderColor = 'rgba(255, 255, 255, 0.08)';
    window.Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif';
    window.Chart.defaults.font.size = 11;
  } else {
    reportError('charts', new Error('the chart library did not load; charts are unavailable'));
  }

  /** Ticks every `step` ms between min and max, aligned to local wall-clock time. */
  function clockTicks(min, max, step) {
    var ticks = [];
    if (!isNum(min) || !isNum(max) || !(step > 0) || max <= min) { return ticks; }
    var offset = new Date(min).getTimezoneOffset() * 60e3;
    var t = Math.ceil((min - offset) / step) * step + offset;
    for (var i = 0; t <= max && i < 200; i++, t += step) { ticks.push({ value: t }); }
    return ticks;
  }

  function timeAxis(getStep, withSeconds) {
    return {
      type: 'linear',
      afterBuildTicks: function (axis) {
        var ticks = clockTicks(axis.min, axis.max, getStep());
        if (ticks.length) { axis.ticks = ticks; }
      },
      ticks: {
        maxRotation: 0,
        autoSkip: true,
        callback: function (value) { return fmtClock(value, withSeconds()); }
      },
      grid: { color: 'rgba(255, 255, 255, 0.05)' }
    };
  }

  function makeChart(canvasId, options) {
    if (!hasChart) { return null; }
    var canvas = $(canvasId);
    if (!canvas) { return null; }
    try {
      return new window.Chart(canvas, options);
    } catch (err) {
      reportError('charts', new Error('could not draw chart ' + canvasId + ': ' + (err && err.message)));
      return null;
    }
  }

  function updateChart(chart) {
    if (!chart) { return; }
    try {
      chart.update('none');
    } catch (err) {
      reportError('charts', new Error('could not redraw a chart: ' + (err && err.message)));
    }
  }

  // ---------------------------------------------------------------- live pipeline

  var throughputPoints = []; // { x: ms, y: records/s }
  var lastWriterSample = null; // { at: ms, records: n }

  var throughputChart = makeChart('throughput-chart', {
    type: 'line',
    data: {
      datasets: [{
        label: 'writer records/s',
        data: throughputPoints,
        borderColor: '#58a6ff',
        backgroundColor: 'rgba(88, 166, 255, 0.15)',
        fill: true,
        borderWidth: 1.5,
        pointRadius: 0,
        pointHitRadius: 6,
        tension: 0.25
      }]
    },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      normalized: true,
      interaction: { mode: 'nearest', axis: 'x', intersect: false },
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            title: function (items) { return items.length ? fmtClock(items[0].parsed.x, true) : ''; },
            label: function (item) { return fmtDec(item.parsed.y) + ' records/s'; }
          }
        }
      },
      scales: {
        x: timeAxis(function () { return 30e3; }, function () { return true; }),
        y: { beginAtZero: true, ticks: { precision: 0 } }
      }
    }
  });

  function recordThroughput(writer) {
    var records = writer && writer.actor ? writer.actor.records : null;
    var now = Date.now();
    if (isNum(records)) {
      if (lastWriterSample && records >= lastWriterSample.records && now > lastWriterSample.at) {
        var rate = (records - lastWriterSample.records) * 1000 / (now - lastWriterSample.at);
        throughputPoints.push({ x: now, y: Math.round(rate * 10) / 10 });
      }
      lastWriterSample = { at: now, records: records };
    }
    while (throughputPoints.length && throughputPoints[0].x < now - THROUGHPUT_SPAN_MS) {
      throughputPoints.shift();
    }
    if (throughputChart) {
      throughputChart.options.scales.x.min = now - THROUGHPUT_SPAN_MS;
      throughputChart.options.scales.x.max = now;
      updateChart(throughputChart);
    }
  }

  // One card per actor, from the page's template, where the template stands.
  function buildActorCards() {
    var template = $('actor-card');
    if (!template) { return; }
    ACTORS.forEach(function (name) {
      var card = template.content.firstElementChild.cloneNode(true);
      card.setAttribute('data-actor', name);
      card.querySelector('h3').textContent = ACTOR_TITLES[name];
      template.parentNode.insertBefore(card, template);
    });
  }

  function renderActor(name, report) {
    var card = document.querySelector('.actor[data-actor="' + name + '"]');
    if (!card) { return; }
    var a = report && report.actor ? report.actor : {};
    function field(f) { return card.querySelector('[data-field="' + f + '"]'); }

    var depth = a.mailbox_depth;
    var capacity = a.mailbox_capacity;
    var fill = field('mailbox-fill');
    if (isNum(depth) && isNum(capacity) && capacity > 0) {
      var ratio = Math.min(1, depth / capacity);
      setText(field('mailbox-text'), fmtInt(depth) + ' / ' + fmtInt(capacity));
      if (fill) {
        fill.style.width = (ratio * 100).toFixed(1) + '%';
        fill.className = 'bar-fill' + (ratio >= 0.9 ? ' level-bad' : ratio >= 0.5 ? ' level-warn' : '');
      }
    } else {
      setText(field('mailbox-text'), isNum(depth) ? fmtInt(depth) + ' queued' : '\u2014');
      if (fill) { fill.style.width = '0%'; fill.className = 'bar-fill'; }
    }
    setText(field('records'), fmtInt(a.records));
    setText(field('rate_10s'), fmtRate(a.rate_10s));
    setText(field('rate_1m'), fmtRate(a.rate_1m));
    setText(field('messages'), fmtInt(a.messages_received) + ' / ' + fmtInt(a.messages_handled));
    setText(field('errors'), fmtInt(a.errors));
  }

  function renderBackpressure(bp) {
    var state = bp && typeof bp.state === 'string' ? bp.state : 'unknown';
    var level = state === 'ok' ? 'ok' : state === 'throttled' ? 'warn' : state === 'paused' ? 'bad' : 'muted';
    setBadge('backpressure-state', state, level);
    setText('backpressure-reason', bp && bp.reason ? String(bp.reason) : '\u2014');
  }

  function renderConsumer(consumer) {
    consumer = consumer || {};
    var assigned = Array.isArray(consumer.assigned_partitions) ? consumer.assigned_partitions : [];
    var paused = Array.isArray(consumer.paused_partitions) ? consumer.paused_partitions : [];
    var partitions = consumer.partitions && typeof consumer.partitions === 'object' ? consumer.partitions : {};

    setText('consumer-joined', consumer.joined === true ? 'yes' : consumer.joined === false ? 'no' : '\u2014');
    setText('consumer-assigned', assigned.length ? assigned.join(', ') : 'none');
    setText('consumer-paused', paused.length ? paused.join(', ') : 'none');

    var pausedSet = {};
    paused.forEach(function (p) { pausedSet[String(p)] = true; });

    var ids = Object.keys(partitions).sort(function (x, y) { return Number(x) - Number(y); });
    var total = 0;
    var anyLag = false;
    var rows = ids.map(function (id) {
      var p = partitions[id] || {};
      if (isNum(p.lag)) { total += p.lag; anyLag = true; }
      var tr = document.createElement('tr');
      if (pausedSet[id]) { tr.className = 'paused'; }
      tr.appendChild(cell(id + (pausedSet[id] ? ' (paused)' : '')));
      tr.appendChild(cell(fmtInt(p.committed_offset), 'num'));
      tr.appendChild(cell(fmtInt(p.high_watermark), 'num'));
      tr.appendChild(cell(fmtInt(p.lag), 'num' + (isNum(p.lag) && p.lag > 1000 ? ' lag-high' : '')));
      return tr;
    });
    replaceRows($('partitions-body'), rows.length ? rows : [emptyRow(4, 'no partitions assigned')]);
    var lagText = anyLag ? fmtInt(total) + ' records' : '\u2014';
    setText('consumer-lag-total', lagText);
    setText('partitions-lag-total', lagText);
  }

  function renderValidator(validator) {
    validator = validator || {};
    setText('invalid-total', fmtInt(validator.invalid_total));
    var byReason = validator.invalid_by_reason && typeof validator.invalid_by_reason === 'object' ? validator.invalid_by_reason : {};
    var reasons = Object.keys(byReason)
      .filter(function (k) { return isNum(byReason[k]) && byReason[k] > 0; })
      .sort(function (x, y) { return byReason[y] - byReason[x] || (x < y ? -1 : 1); });
    var rows = reasons.map(function (k) {
      var tr = document.createElement('tr');
      tr.appendChild(cell(k.replace(/_/g, ' ')));
      tr.appendChild(cell(fmtInt(byReason[k]), 'num'));
      return tr;
    });
    replaceRows($('invalid-reasons'), rows.length ? rows : [emptyRow(2, 'none rejected')]);
  }

  function renderWriter(writer) {
    writer = writer || {};
    // Plain digits, so that the figure reads as a number.
    var written = $('writer-rows-written');
    if (written) {
      setText(written, isNum(writer.rows_written) ? String(writer.rows_written) : '\u2014');
    }
    setText('writer-rows-buffered', fmtInt(writer.rows_buffered));

    var f = writer.last_flush;
    if (f && typeof f === 'object') {
      var at = parseTime(f.at);
      setText('flush-at', isNum(at) ? fmtClock(at, true) + ' \u00b7 ' + fmtAgo(at) : '\u2014');
      setText('flush-rows', fmtInt(f.rows));
      setText('flush-duration', isNum(f.duration_ms) ? fmtDec(f.duration_ms) + ' ms' : '\u2014');
      setText('flush-trigger', f.trigger ? String(f.trigger) : '\u2014');
    } else {
      setText('flush-at', 'no flush yet');
      setText('flush-rows', '\u2014');
      setText('flush-duration', '\u2014');
      setText('flush-trigger', '\u2014');
    }
    var flushes = writer.flushes || {};
    setText('flushes-size', fmtInt(flushes.size));
    setText('flushes-time', fmtInt(flushes.time));
    setText('flushes-shutdown', fmtInt(flushes.shutdown));
  }

  function renderDatabase(db) {
    db = db || {};
    if (db.connected === true) {
      setBadge('db-connected', 'connected', 'ok');
    } else if (db.connected === false) {
      setBadge('db-connected', 'disconnected', 'bad');
    } else {
      setBadge('db-connected', 'unknown', 'muted');
    }
    setText('db-storage', db.storage ? String(db.storage) : '\u2014');
    setText('db-error', db.error ? String(db.error) : 'none');
    var errEl = $('db-error');
    if (errEl) { errEl.className = db.error ? 'text-bad' : ''; }
  }

  function renderStatus(status) {
    renderBackpressure(status.backpressure);
    ACTORS.forEach(function (name) { renderActor(name, status[name]); });
    renderConsumer(status.consumer);
    renderValidator(status.validator);
    renderWriter(status.writer);
    renderDatabase(status.database);
    if (status.ready === true) {
      setBadge('ready-state', 'ready', 'ok');
    } else if (status.ready === false) {
      setBadge('ready-state', 'not ready', 'warn');
    }
    recordThroughput(status.writer);
  }

  function pollStatus() {
    getJSON('/status')
      .then(function (status) {
        renderStatus(status);
        var el = $('status-updated');
        if (el) {
          var now = Date.now();
          el.textContent = fmtClock(now, true);
          el.setAttribute('datetime', new Date(now).toISOString());
        }
        clearError('status');
      })
      .catch(function (err) {
        reportError('status', err);
        setBadge('ready-state', 'no status', 'bad');
      })
      .then(function () { setTimeout(pollStatus, STATUS_INTERVAL_MS); });
  }

  // ---------------------------------------------------------------- stored metrics

  var colorOf = new Map();

  function podColor(name) {
    if (!colorOf.has(name)) { colorOf.set(name, PALETTE[colorOf.size % PALETTE.length]); }
    return colorOf.get(name);
  }

  function currentWindow() {
    var sel = $('filter-window');
    return sel && WINDOWS[sel.value] ? sel.value : '1h';
  }

  function seriesChart(canvasId, unit) {
    var now = Date.now();
    var xAxis = timeAxis(function () { return WINDOWS[currentWindow()].tick; }, function () { return false; });
    xAxis.min = now - WINDOWS[currentWindow()].span;
    xAxis.max = now;
    return makeChart(canvasId, {
      type: 'line',
      data: { datasets: [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        normalized: true,
        spanGaps: false,
        interaction: { mode: 'nearest', axis: 'x', intersect: false },
        plugins: {
          legend: { position: 'bottom', labels: { boxWidth: 10, boxHeight: 10, padding: 8 } },
          tooltip: {
            itemSort: function (a, b) { return b.parsed.y - a.parsed.y; },
            callbacks: {
              title: function (items) { return items.length ? fmtDateTime(items[0].parsed.x) : ''; },
              label: function (item) { return item.dataset.label + ': ' + fmtDec(item.parsed.y) + ' ' + unit; }
            }
          }
        },
        scales: {
          x: xAxis,
          y: { beginAtZero: true, title: { display: true, text: unit } }
        }
      }
    });
  }

  var cpuChart = seriesChart('cpu-chart', '%');
  var memoryChart = seriesChart('memory-chart', 'MiB');

  var FILTERS = [
    { id: 'filter-service', param: 'service', path: '/api/v1/services', all: 'all services' },
    { id: 'filter-namespace', param: 'namespace', path: '/api/v1/namespaces', all: 'all namespaces' },
    { id: 'filter-node', param: 'node', path: '/api/v1/nodes', all: 'all nodes' }
  ];

  function fillSelect(sel, names, allLabel) {
    var current = sel.value;
    if (current && names.indexOf(current) < 0) { names = names.concat([current]); }
    var wanted = [''].concat(names);
    var existing = Array.prototype.map.call(sel.options, function (o) { return o.value; });
    if (existing.join('\u0000') === wanted.join('\u0000')) { return; }
    var options = wanted.map(function (name) {
      var o = document.createElement('option');
      o.value = name;
      o.textContent = name === '' ? allLabel : name;
      return o;
    });
    replaceRows(sel, options);
    sel.value = current;
  }

  function loadFilterOptions() {
    return Promise.all(FILTERS.map(function (f) {
      return getJSON(f.path).then(function (body) {
        var names = (Array.isArray(body.data) ? body.data : [])
          .map(function (d) { return d && typeof d.name === 'string' ? d.name : null; })
          .filter(function (n) { return n; })
          .sort();
        var sel = $(f.id);
        if (sel) { fillSelect(sel, names, f.all); }
      });
    })).then(function () { clearError('filters'); }, function (err) { reportError('filters', err); });
  }

  function filterParams() {
    var params = new URLSearchParams();
    FILTERS.forEach(function (f) {
      var sel = $(f.id);
      if (sel && sel.value) { params.set(f.param, sel.value); }
    });
    return params;
  }

  /** Keeps the chosen filters in the address, so a reload or a shared link shows the same view. */
  function saveFiltersToUrl() {
    try {
      var params = filterParams();
      var w = currentWindow();
      if (w !== '1h') { params.set('window', w); }
      var q = params.toString();
      history.replaceState(null, '', location.pathname + (q ? '?' + q : ''));
    } catch (e) { /* the address is a convenience only */ }
  }

  function restoreFiltersFromUrl() {
    var params;
    try { params = new URLSearchParams(location.search); } catch (e) { return; }
    FILTERS.forEach(function (f) {
      var v = params.get(f.param);
      var sel = $(f.id);
      if (v && sel) {
        var o = document.createElement('option');
        o.value = v;
        o.textContent = v;
        sel.appendChild(o);
        sel.value = v;
      }
    });
    var w = params.get('window');
    if (w && WINDOWS[w] && $('filter-window')) { $('filter-window').value = w; }
  }

  function renderLatest(body) {
    var rows = (Array.isArray(body.data) ? body.data : []).filter(function (r) { return r && r.pod_name; });
    rows.sort(function (a, b) { return a.pod_name < b.pod_name ? -1 : a.pod_name > b.pod_name ? 1 : 0; });
    var trs = rows.map(function (r) {
      var tr = document.createElement('tr');
      var at = parseTime(r.time);
      tr.appendChild(cell(String(r.pod_name), 'pod'));
      tr.appendChild(cell(r.service ? String(r.service) : '\u2014'));
      tr.appendChild(cell(r.namespace ? String(r.namespace) : '\u2014'));
      tr.appendChild(cell(r.node_name ? String(r.node_name) : '\u2014'));
      tr.appendChild(cell(fmtDec(r.cpu), 'num'));
      tr.appendChild(cell(fmtDec(r.memory), 'num'));
      var when = cell(fmtAgo(at));
      if (isNum(at)) { when.title = fmtDateTime(at); }
      tr.appendChild(when);
      return tr;
    });
    var table = $('latest-table');
    var tbody = table ? table.tBodies[0] : null;
    replaceRows(tbody, trs.length ? trs : [emptyRow(7, 'no samples for these filters')]);
  }

  /** Points of one series as {x, y}, with a break wherever more than two buckets are missing. */
  function toPoints(points, key, bucketMs) {
    var out = [];
    var prev = null;
    for (var i = 0; i < points.length; i++) {
      var p = points[i];
      var t = parseTime(p && p.time);
      if (!isNum(t)) { continue; }
      if (prev !== null && t - prev > 2.5 * bucketMs) { out.push({ x: prev + bucketMs, y: null }); }
      out.push({ x: t, y: isNum(p[key]) ? p[key] : null });
      prev = t;
    }
    return out;
  }

  function applySeries(chart, series, key, from, to, bucketMs) {
    if (!chart) { return; }
    var hidden = {};
    chart.data.datasets.forEach(function (ds, i) {
      if (!chart.isDatasetVisible(i)) { hidden[ds.label] = true; }
    });
    chart.data.datasets = series.map(function (s) {
      var color = podColor(s.name);
      return {
        label: s.name,
        data: toPoints(s.points, key, bucketMs),
        borderColor: color,
        backgroundColor: color,
        borderWidth: 1.5,
        pointRadius: s.points.length === 1 ? 3 : 0,
        pointHoverRadius: 4,
        pointHitRadius: 6,
        hidden: !!hidden[s.name]
      };
    });
    chart.options.scales.x.min = from;
    chart.options.scales.x.max = to;
    updateChart(chart);
  }

  function renderSeries(body, from, to, bucketMs) {
    var all = (Array.isArray(body.series) ? body.series : [])
      .filter(function (s) { return s && Array.isArray(s.points); })
      .map(function (s) {
        var last = -Infinity;
        s.points.forEach(function (p) {
          var t = parseTime(p && p.time);
          if (isNum(t) && t > last) { last = t; }
        });
        return { name: s.group === null || s.group === undefined ? '(none)' : String(s.group), points: s.points, last: last };
      })
      .filter(function (s) { return s.points.length > 0; });

    // The pods with the most recent data, then by name so that the legend is stable.
    var shown = all.slice().sort(function (a, b) { return b.last - a.last || (a.name < b.name ? -1 : 1); })
      .slice(0, MAX_CHARTED_PODS)
      .sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });

    var note;
    if (all.length === 0) {
      note = 'No samples in this window.';
    } else if (all.length > MAX_CHARTED_PODS) {
      note = 'Charts show the ' + MAX_CHARTED_PODS + ' pods with the most recent data, of ' + all.length + ' pods. Narrow the filters to see others.';
    } else {
      note = all.length + (all.length === 1 ? ' pod' : ' pods') + ', averaged per ' + body.bucket + '.';
    }
    setText('series-note', note);

    applySeries(cpuChart, shown, 'cpu', from, to, bucketMs);
    applySeries(memoryChart, shown, 'memory', from, to, bucketMs);
  }

  var metricsSeq = 0;
  var metricsTimer = null;

  function loadMetrics() {
    if (metricsTimer) { clearTimeout(metricsTimer); metricsTimer = null; }
    var seq = ++metricsSeq;
    var win = WINDOWS[currentWindow()];
    var to = Date.now();
    var from = to - win.span;

    var filters = filterParams();
    var latestQuery = filters.toString();
    var seriesParams = new URLSearchParams(filters);
    seriesParams.set('bucket', win.bucket);
    seriesParams.set('agg', 'avg');
    seriesParams.set('group_by', 'pod');
    seriesParams.set('from', String(from));
    seriesParams.set('to', String(to));

    var latest = getJSON('/api/v1/metrics/latest' + (latestQuery ? '?' + latestQuery : ''));
    var series = getJSON('/api/v1/metrics/series?' + seriesParams.toString());

    return Promise.all([
      latest.then(function (body) {
        if (seq === metricsSeq) { renderLatest(body); }
      }),
      series.then(function (body) {
        if (seq === metricsSeq) { renderSeries(body, from, to, win.bucketMs); }
      })
    ]).then(function () {
      if (seq !== metricsSeq) { return; }
      clearError('metrics');
      setText('metrics-updated', 'updated ' + fmtClock(Date.now(), true));
    }, function (err) {
      if (seq === metricsSeq) { reportError('metrics', err); }
    }).then(function () {
      if (seq === metricsSeq) { metricsTimer = setTimeout(refreshMetrics, METRICS_INTERVAL_MS); }
    });
  }

  function refreshMetrics() {
    loadFilterOptions().then(loadMetrics).catch(function (err) { reportError('metrics', err); });
  }

  // ---------------------------------------------------------------- start

  function start() {
    buildActorCards();
    restoreFiltersFromUrl();
    var form = $('filters');
    if (form) {
      form.addEventListener('change', function () {
        saveFiltersToUrl();
        loadMetrics().catch(function (err) { reportError('metrics', err); });
      });
      form.addEventListener('submit', function (e) { e.preventDefault(); });
    }
    window.addEventListener('unhandledrejection', function (e) {
      e.preventDefault();
      reportError('page', e.reason instanceof Error ? e.reason : new Error(String(e.reason)));
    });
    pollStatus();
    refreshMetrics();
  }

  try {
    start();
  } catch (err) {
    reportError('page', err);
  }
})();
