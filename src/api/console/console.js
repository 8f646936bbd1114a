// The flashsale console: plain JavaScript, no build step, served from the binary.
// The admin key lives in sessionStorage (this tab only) and travels in the Authorization
// header, never in a URL. Live data comes by push: the admin event stream (read with fetch,
// since EventSource cannot send headers) and the sale's public stream (EventSource).
'use strict';

const KEY_STORAGE = 'flashsale.adminKey';
const CHART_SECONDS = 300;
const RECENT_EVENTS = 50;
const $ = (id) => document.getElementById(id);

const app = {
  key: sessionStorage.getItem(KEY_STORAGE),
  sales: [],
  listStream: null,      // AbortController of the all-sales event stream
  reloadTimer: null,
  listTimer: null,
  detail: null,          // the open sale: { id, sku, view, source, stream, samples, grants, sampler }
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---- messages -------------------------------------------------------------------------

function showMessage(text, kind = 'error') {
  const box = $('message');
  box.textContent = text;
  box.className = kind === 'info' ? 'message info' : 'message';
  box.hidden = false;
  if (kind === 'info') setTimeout(() => { if (box.textContent === text) box.hidden = true; }, 4000);
}

function clearMessage() {
  $('message').hidden = true;
}

function setConnection(live) {
  const pill = $('connection');
  pill.hidden = false;
  pill.textContent = live ? 'live' : 'reconnecting…';
  pill.className = live ? 'pill live' : 'pill down';
}

// ---- the admin API ----------------------------------------------------------------------

function authHeaders(key = app.key) {
  return { Authorization: `Bearer ${key}` };
}

async function api(method, path, body, key = app.key) {
  const headers = authHeaders(key);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, 'UNREACHABLE', 'The service is unreachable. Is it running?');
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const code = (data && data.code) || `HTTP_${response.status}`;
    const message = (data && data.message) || response.statusText;
    throw new ApiError(response.status, code, `${code}: ${message}`);
  }
  return data;
}

// Reports a failed call; a rejected key signs out.
function report(err) {
  if (err instanceof ApiError && err.status === 401) {
    signOut('The admin key was refused: sign in again.');
    return;
  }
  showMessage(err.message || String(err));
}

// ---- Server-Sent Events over fetch (for streams that need the key) ------------------------

// Reads an SSE response and calls onMessage({event, id, data}) per message; reconnects
// with Last-Event-ID after a break until `controller` is aborted.
async function followStream(path, controller, onMessage, onState = () => {}) {
  let lastId = null;
  while (!controller.signal.aborted) {
    try {
      const headers = authHeaders();
      if (lastId) headers['Last-Event-ID'] = lastId;
      const response = await fetch(path, { headers, signal: controller.signal });
      if (response.status === 401) { report(new ApiError(401, 'UNAUTHORIZED', '')); return; }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      onState(true);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let text = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        let end;
        while ((end = text.indexOf('\n\n')) >= 0) {
          const block = text.slice(0, end);
          text = text.slice(end + 2);
          const message = parseBlock(block);
          if (message.id) lastId = message.id;
          if (message.data !== null) onMessage(message);
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    onState(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function parseBlock(block) {
  const message = { event: 'message', id: null, data: null };
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) message.event = line.slice(6).trim();
    else if (line.startsWith('id:')) message.id = line.slice(3).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
  }
  if (data.length) {
    try { message.data = JSON.parse(data.join('\n')); } catch (err) { message.data = null; }
  }
  return message;
}

// ---- signing in and out -------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $('admin-key').value.trim();
  if (!key) return;
  try {
    await api('GET', '/api/v1/admin/sales?limit=1', undefined, key);
  } catch (err) {
    showMessage(err.status === 401 ? 'Wrong admin key.' : err.message);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  app.key = key;
  $('admin-key').value = '';
  clearMessage();
  start();
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  app.key = null;
  closeDetail();
  if (app.listStream) app.listStream.abort();
  app.listStream = null;
  clearInterval(app.listTimer);
  app.listTimer = null;
  $('sales').hidden = true;
  $('sign-out').hidden = true;
  $('connection').hidden = true;
  $('sign-in').hidden = false;
  if (reason) showMessage(reason); else clearMessage();
}

function start() {
  $('sign-in').hidden = true;
  $('sales').hidden = false;
  $('sign-out').hidden = false;
  loadSales();
  // Any event of any sale reloads the list (at most four times a second); the timer
  // catches what has no event, such as a sale opening or ending by the clock.
  app.listStream = new AbortController();
  followStream('/api/v1/admin/events/stream', app.listStream, scheduleSalesReload, setConnection);
  app.listTimer = setInterval(loadSales, 5000);
}

// ---- the sales list ---------------------------------------------------------------------

function scheduleSalesReload() {
  if (app.reloadTimer) return;
  app.reloadTimer = setTimeout(() => { app.reloadTimer = null; loadSales(); }, 250);
}

async function loadSales() {
  if (!app.key) return;
  try {
    app.sales = await api('GET', '/api/v1/admin/sales?limit=200');
    renderSales();
  } catch (err) {
    report(err);
  }
}

function cell(text, field, numeric) {
  const td = document.createElement('td');
  td.textContent = text;
  if (field) td.dataset.field = field;
  if (numeric) td.className = 'num';
  return td;
}

function renderSales() {
  const body = $('sales-body');
  body.replaceChildren(...app.sales.map((sale) => {
    const row = document.createElement('tr');
    row.dataset.sale = sale.sku;
    if (app.detail && app.detail.id === sale.id) row.className = 'selected';
    const state = document.createElement('td');
    const pill = document.createElement('span');
    pill.className = `pill ${sale.state}`;
    pill.textContent = sale.state;
    pill.dataset.field = 'state';
    state.append(pill);
    row.append(
      cell(sale.sku, 'sku'), state, cell(sale.checkout, 'checkout'),
      cell(sale.stock, 'stock', true), cell(sale.sold, 'sold', true),
      cell(sale.held, 'held', true), cell(sale.available, 'available', true),
      cell(sale.checkout === 'queued' ? sale.queueLength : '–', 'waiting', true),
    );
    row.addEventListener('click', () => openDetail(sale.id));
    return row;
  }));
  $('sales-empty').hidden = app.sales.length > 0;
}

async function createSale(event) {
  event.preventDefault();
  const form = event.target;
  const values = Object.fromEntries(new FormData(form));
  const body = {
    sku: values.sku.trim(), name: values.name.trim(), stock: Number(values.stock),
    checkout: values.checkout,
  };
  if (values.startsAt) body.startsAt = new Date(values.startsAt).toISOString();
  if (values.endsAt) body.endsAt = new Date(values.endsAt).toISOString();
  if (values.holdSeconds && body.checkout === 'queued') body.holdSeconds = Number(values.holdSeconds);
  try {
    const sale = await api('POST', '/api/v1/admin/sales', body);
    form.reset();
    form.hidden = true;
    showMessage(`Sale ${sale.sku} created.`, 'info');
    await loadSales();
    openDetail(sale.id);
  } catch (err) {
    report(err);
  }
}

// ---- one sale, live -----------------------------------------------------------------------

async function openDetail(id) {
  closeDetail();
  let sale;
  try {
    sale = await api('GET', `/api/v1/admin/sales/${encodeURIComponent(id)}`);
  } catch (err) {
    report(err);
    return;
  }
  const detail = {
    id: sale.id, sku: sale.sku, view: sale, samples: [], grants: [],
    source: null, stream: new AbortController(), sampler: null,
  };
  app.detail = detail;
  $('detail').hidden = false;
  $('detail-sku').textContent = sale.sku;
  $('detail-name').textContent = `${sale.name} · ${sale.checkout} checkout · ` +
    `${new Date(sale.startsAt).toLocaleString()} – ${new Date(sale.endsAt).toLocaleString()}`;
  $('detail-counters').dataset.sale = sale.sku;
  $('queue-panel').hidden = sale.checkout !== 'queued';
  $('audit-result').textContent = 'Not run yet.';
  delete $('audit-result').dataset.result;
  $('recent-events').replaceChildren();
  renderStateChanges(sale.events || []);
  applyView(sale);
  renderSales();

  // Counters: the public stream, pushed on every change; it ends with the sale.
  const source = new EventSource(`/api/v1/sales/${encodeURIComponent(sale.id)}/events`);
  source.addEventListener('sale', (event) => {
    const view = JSON.parse(event.data);
    applyView(view);
    if (['ended', 'cancelled', 'archived'].includes(view.state)) source.close();
  });
  detail.source = source;
  // Events: the admin stream of this sale (the key goes in a header).
  followStream(`/api/v1/admin/events/stream?sale=${encodeURIComponent(sale.id)}`, detail.stream,
    (message) => onSaleEvent(detail, message.data));
  detail.sampler = setInterval(() => sample(detail), 1000);
  $('detail').scrollIntoView({ behavior: 'smooth', block: 'start' });
}

function closeDetail() {
  const detail = app.detail;
  if (!detail) return;
  if (detail.source) detail.source.close();
  detail.stream.abort();
  clearInterval(detail.sampler);
  app.detail = null;
  $('detail').hidden = true;
  renderSales();
}

function applyView(view) {
  const detail = app.detail;
  if (!detail) return;
  detail.view = { ...detail.view, ...view };
  const v = detail.view;
  for (const field of ['sold', 'held', 'available', 'stock']) {
    $('detail-counters').querySelector(`[data-field="${field}"]`).textContent = v[field];
  }
  const state = $('detail-state');
  state.textContent = v.state;
  state.className = `pill ${v.state}`;
  const stock = Math.max(v.stock, 1);
  $('bar-sold').style.width = `${(100 * v.sold) / stock}%`;
  $('bar-held').style.width = `${(100 * v.held) / stock}%`;
  $('bar-available').style.width = `${(100 * v.available) / stock}%`;
  $('cancel-sale').disabled = !['scheduled', 'active'].includes(v.state);
  $('archive-sale').disabled = v.state === 'archived';
  // Keep the list's row in step without waiting for its reload.
  const row = document.querySelector(`#sales-body tr[data-sale="${CSS.escape(v.sku)}"]`);
  if (row) {
    for (const field of ['sold', 'held', 'available']) {
      row.querySelector(`[data-field="${field}"]`).textContent = v[field];
    }
  }
  renderQueue(detail);
}

function onSaleEvent(detail, event) {
  if (!event || app.detail !== detail) return;
  if (event.type === 'hold.granted') detail.grants.push(Date.now());
  if (event.type.startsWith('sale.')) refreshStateChanges(detail);
  const list = $('recent-events');
  const item = document.createElement('li');
  const time = document.createElement('time');
  time.textContent = new Date(event.occurredAt).toLocaleTimeString();
  const what = document.createElement('span');
  const who = event.data && event.data.userId ? ` · ${event.data.userId}` : '';
  what.textContent = `#${event.sequence} ${event.type}${who}`;
  item.append(time, what);
  list.prepend(item);
  while (list.children.length > RECENT_EVENTS) list.lastChild.remove();
}

async function refreshStateChanges(detail) {
  try {
    const sale = await api('GET', `/api/v1/admin/sales/${encodeURIComponent(detail.id)}`);
    if (app.detail === detail) renderStateChanges(sale.events || []);
  } catch (err) {
    report(err);
  }
}

function renderStateChanges(events) {
  $('state-changes').replaceChildren(...events.map((change) => {
    const item = document.createElement('li');
    const time = document.createElement('time');
    time.textContent = new Date(change.occurredAt).toLocaleTimeString();
    const what = document.createElement('span');
    what.textContent = change.reason ? `${change.state} (${change.reason})` : change.state;
    item.append(time, what);
    return item;
  }));
  if (!events.length) $('state-changes').innerHTML = '<li class="muted">None recorded yet.</li>';
}

function renderQueue(detail) {
  if (detail.view.checkout !== 'queued') return;
  const now = Date.now();
  detail.grants = detail.grants.filter((t) => now - t < 10000);
  const rate = detail.grants.length / 10;
  const waiting = detail.view.queueLength || 0;
  $('q-waiting').textContent = waiting;
  $('q-holds').textContent = detail.view.held;
  $('q-rate').textContent = rate.toFixed(1);
  $('q-eta').textContent = waiting === 0 ? '0 s' : rate > 0 ? formatSeconds(waiting / rate) : '–';
}

function formatSeconds(seconds) {
  if (seconds < 90) return `${Math.ceil(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// Once a second: the units sold since the last sample, for the chart.
function sample(detail) {
  const sold = detail.view.sold;
  const last = detail.samples.length ? detail.samples[detail.samples.length - 1] : null;
  detail.samples.push({ sold, rate: last ? Math.max(sold - last.sold, 0) : 0 });
  if (detail.samples.length > CHART_SECONDS) detail.samples.shift();
  drawChart(detail.samples);
  renderQueue(detail);
}

function drawChart(samples) {
  const svg = $('rate-chart');
  const max = Math.max(1, ...samples.map((s) => s.rate));
  const step = 600 / (CHART_SECONDS - 1);
  const offset = CHART_SECONDS - samples.length;
  const points = samples.map((s, i) => `${((offset + i) * step).toFixed(1)},${(115 - (105 * s.rate) / max).toFixed(1)}`);
  const ns = 'http://www.w3.org/2000/svg';
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', points.join(' '));
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', '#2f6fed');
  line.setAttribute('stroke-width', '2');
  line.setAttribute('vector-effect', 'non-scaling-stroke');
  const now = samples.length ? samples[samples.length - 1].rate : 0;
  $('chart-label').textContent = `· now ${now}/s, peak ${max}/s`;
  svg.replaceChildren(line);
}

async function runAudit() {
  const detail = app.detail;
  if (!detail) return;
  const box = $('audit-result');
  box.textContent = 'Running…';
  try {
    const audit = await api('GET', `/api/v1/admin/sales/${encodeURIComponent(detail.id)}/audit`);
    const verdict = audit.passed ? 'PASS' : 'FAIL';
    box.dataset.result = verdict;
    const head = document.createElement('p');
    head.innerHTML = `<span class="${audit.passed ? 'pass' : 'fail'}">${verdict}</span> ` +
      `<span class="muted">at ${new Date().toLocaleTimeString()}</span>`;
    const table = document.createElement('table');
    table.className = 'audit';
    for (const check of audit.checks) {
      const row = table.insertRow();
      row.dataset.check = check.name;
      const result = row.insertCell();
      result.textContent = check.passed ? 'PASS' : 'FAIL';
      result.className = check.passed ? 'pass' : 'fail';
      row.insertCell().textContent = check.name;
      row.insertCell().textContent = check.detail;
    }
    box.replaceChildren(head, table);
  } catch (err) {
    box.textContent = 'The audit could not run.';
    report(err);
  }
}

async function cancelSale() {
  const detail = app.detail;
  if (!detail || !confirm(`Cancel sale ${detail.sku}? Nobody can buy after this; live holds are voided.`)) return;
  try {
    await api('POST', `/api/v1/admin/sales/${encodeURIComponent(detail.id)}/cancel`);
    showMessage(`Sale ${detail.sku} cancelled.`, 'info');
    loadSales();
  } catch (err) {
    report(err);
  }
}

async function archiveSale() {
  const detail = app.detail;
  if (!detail || !confirm(`Delete sale ${detail.sku}? A sale with purchases or holds is archived (kept for its buyers); one without is removed.`)) return;
  try {
    await api('DELETE', `/api/v1/admin/sales/${encodeURIComponent(detail.id)}`);
    showMessage(`Sale ${detail.sku} deleted.`, 'info');
    closeDetail();
    loadSales();
  } catch (err) {
    report(err);
  }
}

// ---- wiring -------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut());
  $('show-create').addEventListener('click', () => { $('create-form').hidden = false; });
  $('cancel-create').addEventListener('click', () => { $('create-form').hidden = true; });
  $('create-form').addEventListener('submit', createSale);
  $('close-detail').addEventListener('click', closeDetail);
  $('run-audit').addEventListener('click', runAudit);
  $('cancel-sale').addEventListener('click', cancelSale);
  $('archive-sale').addEventListener('click', archiveSale);
  if (app.key) start(); else $('sign-in').hidden = false;
});
