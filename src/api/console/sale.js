// The flashsale console's one-sale view: counters pushed by the sale's public stream,
// purchases per second, the waiting room (a raffle's draw: raffle.js), state changes and
// events from the admin stream, the audit, cancel and delete. Uses the helpers of
// console.js (loaded first).
'use strict';

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
    `up to ${sale.perCustomerLimit} per buyer, ${sale.maxPerOrder} per order · ` +
    (sale.allowlist ? `presale: ${sale.allowlistSize ?? 0} on the allow-list · ` : '') +
    `${new Date(sale.startsAt).toLocaleString()} – ${new Date(sale.endsAt).toLocaleString()}`;
  $('detail-counters').dataset.sale = sale.sku;
  $('queue-panel').hidden = sale.checkout !== 'queued';
  showRaffle(detail, sale);
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
  renderVariants(v.variants || []);
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
  noteRaffleEvent(detail, event);
  const list = $('recent-events');
  const item = document.createElement('li');
  const time = document.createElement('time');
  time.textContent = new Date(event.occurredAt).toLocaleTimeString();
  const what = document.createElement('span');
  const who = event.data && event.data.userId ? ` · ${event.data.userId}` : '';
  const units = event.data && event.data.quantity ? ` × ${event.data.quantity}` : '';
  what.textContent = `#${event.sequence} ${event.type}${who}${units}`;
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
  tickRaffle(detail);
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

// Each variant's counters (sales with variants), pushed with the sale's view.
function renderVariants(variants) {
  $('variants-panel').hidden = variants.length === 0;
  $('variants-body').replaceChildren(...variants.map((variant) => {
    const row = document.createElement('tr');
    row.dataset.variant = variant.code;
    const cells = [variant.code, variant.stock, variant.sold, variant.held, variant.available,
      variant.soldOut ? 'sold out' : ''];
    cells.forEach((value, i) => {
      const cell = document.createElement('td');
      cell.textContent = value;
      if (i > 0 && i < 5) cell.className = 'num';
      row.append(cell);
    });
    return row;
  }));
}
