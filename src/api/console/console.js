// The flashsale console: plain JavaScript, no build step, served from the binary. This file
// holds signing in, the API and stream helpers and the sales list; sale.js the one-sale view.
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

function cell(field, numeric) {
  const td = document.createElement('td');
  td.dataset.field = field;
  if (numeric) td.className = 'num';
  return td;
}

// A sale's row, made once and then updated in place: a reload changes the numbers, not the
// elements (a click or a test holding a row keeps it).
function newRow(sale) {
  const row = document.createElement('tr');
  row.dataset.sale = sale.sku;
  row.dataset.id = sale.id;
  const state = document.createElement('td');
  const pill = document.createElement('span');
  pill.dataset.field = 'state';
  state.append(pill);
  row.append(cell('sku'), state, cell('checkout'), cell('stock', true), cell('sold', true),
    cell('held', true), cell('available', true), cell('waiting', true));
  row.addEventListener('click', () => openDetail(row.dataset.id));
  return row;
}

function fillRow(row, sale) {
  const text = {
    sku: sale.sku, state: sale.state, checkout: sale.checkout, stock: sale.stock,
    sold: sale.sold, held: sale.held, available: sale.available,
    waiting: sale.checkout === 'queued' ? sale.queueLength : '–',
  };
  for (const [field, value] of Object.entries(text)) {
    const element = row.querySelector(`[data-field="${field}"]`);
    if (element.textContent !== String(value)) element.textContent = value;
  }
  row.querySelector('[data-field="state"]').className = `pill ${sale.state}`;
  row.className = app.detail && app.detail.id === sale.id ? 'selected' : '';
}

function renderSales() {
  const body = $('sales-body');
  const existing = new Map([...body.children].map((row) => [row.dataset.id, row]));
  const rows = app.sales.map((sale) => {
    const row = existing.get(sale.id) || newRow(sale);
    fillRow(row, sale);
    return row;
  });
  // Only a new, gone or reordered sale rebuilds the list.
  const unchanged = rows.length === body.children.length &&
    rows.every((row, i) => body.children[i] === row);
  if (!unchanged) body.replaceChildren(...rows);
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
  if (values.perCustomerLimit) body.perCustomerLimit = Number(values.perCustomerLimit);
  if (values.maxPerOrder) body.maxPerOrder = Number(values.maxPerOrder);
  if (values.allowlist) body.allowlist = true;
  if (values.variants && values.variants.trim()) {
    // "S:5, M:10": the stock is their sum.
    body.variants = values.variants.split(',').map((part) => part.trim()).filter(Boolean)
      .map((part) => {
        const [code, stock] = part.split(':').map((s) => s.trim());
        return { code, stock: Number(stock) };
      });
    delete body.stock;
  }
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
