// Every run's report: per-endpoint latency in the summary and in a self-contained HTML file,
// with the load generator's own floor beside it.
//
// k6's web dashboard writes nothing for a run shorter than its aggregation period, so the
// bursts had no report; handleSummary runs at the end of every run, however short. The
// runner passes REPORT_DIR; without it the files land in the working directory.
import http from 'k6/http';
import exec from 'k6/execution';
import { BASE_URL } from './common.js';
import { formatDuration, int, k6Duration } from './format.js';

export { formatDuration, int, k6Duration };

const REPORT_DIR = (__ENV.REPORT_DIR || '.').replace(/\/$/, '');
const SCENARIO = __ENV.SCENARIO_NAME || 'k6';

// The floor: the same load against a route that does nothing (liveness: no database), so
// a reader can tell the service's latency from the load generator's. FLOOR=0 turns it off.
export const FLOOR = __ENV.FLOOR !== '0';
export const FLOOR_PATH = '/health/live';

export function floor() {
  http.get(`${BASE_URL}${FLOOR_PATH}`, { tags: { endpoint: 'floor', name: 'floor' } });
}

// The floor scenario for a burst of `vus` buyers with one request each; the real burst
// starts `lead` later, once the floor's burst is over.
export function floorBurst(vus) {
  return { executor: 'per-vu-iterations', vus, iterations: 1, maxDuration: '60s', exec: 'floor' };
}

// Declares per-endpoint sub-metrics so they appear in the summary (k6 reports a tagged
// sub-metric only when a threshold names it). `max>=0` never fails: these thresholds only
// ask for the numbers; the scenario's own thresholds, kept as they are, do the judging.
export function withEndpoints(thresholds, endpoints) {
  const all = Object.assign({}, thresholds);
  for (const endpoint of endpoints) {
    const trend = `http_req_duration{endpoint:${endpoint}}`;
    const failed = `http_req_failed{endpoint:${endpoint}}`;
    const count = `http_reqs{endpoint:${endpoint}}`;
    if (!all[trend]) all[trend] = ['max>=0'];
    if (!all[failed]) all[failed] = ['rate>=0'];
    if (!all[count]) all[count] = ['count>=0'];
  }
  return all;
}

function endpointsOf(metrics) {
  const rows = {};
  for (const [name, metric] of Object.entries(metrics)) {
    const match = /^http_req_duration\{endpoint:([^}]+)\}$/.exec(name);
    if (!match) continue;
    const endpoint = match[1];
    const count = metrics[`http_reqs{endpoint:${endpoint}}`];
    const failed = metrics[`http_req_failed{endpoint:${endpoint}}`];
    const v = metric.values;
    if (!count || !count.values.count) continue;
    rows[endpoint] = {
      count: count.values.count,
      failed: failed ? failed.values.rate : 0,
      avg: v.avg, med: v.med, p90: v['p(90)'], p95: v['p(95)'], p99: v['p(99)'], max: v.max,
    };
  }
  return rows;
}

// A threshold's measured value: the aggregation its rule names (`p(95)<1000` -> p(95)), read
// from the summary, formatted as k6 formats it (104.98ms, 0.00%, 100).
const RULE = /^\s*(count|rate|value|avg|min|max|med|p\(\d+(?:\.\d+)?\))\s*(?:<=|>=|===|==|!=|<|>)/;

export function measuredValue(metric, rule) {
  const match = RULE.exec(rule);
  if (!match) return null;
  const agg = match[1];
  let value = metric.values[agg];
  if (value === undefined && agg === 'p(50)') value = metric.values.med;
  if (value === undefined) return { agg, text: 'n/a (add it to summaryTrendStats)' };
  let text;
  if (metric.type === 'trend' && !metric.values.max && !metric.values.min && !metric.values.avg) text = '– (no samples)';
  else if (metric.type === 'trend' && metric.contains === 'time') text = k6Duration(value);
  else if (metric.type === 'rate' && agg === 'rate') text = `${(100 * value).toFixed(2)}%`;
  else if (metric.type === 'counter' && agg === 'rate') text = `${value.toFixed(2)}/s`;
  else text = Number.isInteger(value) ? String(value) : value.toFixed(2);
  return { agg, text };
}

function thresholdsOf(metrics) {
  const rows = [];
  for (const name of Object.keys(metrics).sort()) {
    const metric = metrics[name];
    for (const [rule, result] of Object.entries(metric.thresholds || {})) {
      if (/^(max>=0|rate>=0|count>=0)$/.test(rule)) continue;
      const measured = measuredValue(metric, rule);
      rows.push({ metric: name, rule, ok: result.ok, measured: measured ? `${measured.agg}=${measured.text}` : '' });
    }
  }
  return rows;
}

function countersOf(metrics) {
  const rows = [];
  for (const [name, metric] of Object.entries(metrics)) {
    if (name.includes('{')) continue;
    if (metric.type === 'counter' && !name.startsWith('http_') && !name.startsWith('data_') &&
        !name.startsWith('iterations')) {
      rows.push([name, metric.values.count]);
    } else if (metric.type === 'rate' && !name.startsWith('http_') && name !== 'checks') {
      rows.push([name, `${(100 * metric.values.rate).toFixed(2)} %`]);
    }
  }
  return rows.sort();
}

const ms = (value) => (value === undefined ? '–' : `${value.toFixed(1)}`);

// The teardown's verdict on the books (queue-journey): confirmed orders, counted by walking
// every buyer's purchases, plus what is left and held must be the starting quantity.
export function booksVerdict(books) {
  const total = books.confirmed + books.available + books.held;
  if (books.confirmed > books.stock || total > books.stock) return 'OVERBOOKING DETECTED';
  if (total < books.stock) return 'UNDERSELLING DETECTED';
  return 'PASS';
}

export function booksLine(books) {
  const total = books.confirmed + books.available + books.held;
  const verdict = booksVerdict(books);
  const against = { PASS: 'the starting quantity', 'OVERBOOKING DETECTED': 'more than the starting quantity',
    'UNDERSELLING DETECTED': 'less than the starting quantity' }[verdict];
  return `${verdict}: confirmed orders ${int(books.confirmed)} + remaining ${int(books.available)}` +
    ` + held ${int(books.held)} = ${int(total)}, ${against}${verdict === 'PASS' ? '' : ` ${int(books.stock)}`}` +
    ` (orders counted through GET /api/v1/users/{userId}/purchases of ${int(books.walked)} buyers)`;
}

// The final summary: VUs, attempts and successes, failures by reason, journey times.
// k6 leaves a metric out of its summary until it has a sample, so a reason of the scenario's
// family with no metric is a 0, and a reason outside the family is "–".
const count = (metrics, names) => names.reduce((sum, name) => sum + (metrics[name] ? metrics[name].values.count || 0 : 0), 0);

// [label, the purchase scenarios' counters, queue-journey's counters, what it means (one
// text, or [for purchases, for journeys])]
const REASONS = [
  ['sold out', ['purchase_sold_out'], ['journey_sold_out'], 'nothing left when they asked'],
  ['sale ended', ['purchase_not_active'], ['journey_sale_ended'], 'the sale was over'],
  ['timeout', ['purchase_timeout'], ['journey_gave_up'], ['no answer within the request timeout', 'buyers who gave up after JOURNEY_TIMEOUT']],
  ['expired hold', [], ['journey_hold_expired'], 'holds that ran out before the confirm (the buyer joined again)'],
  ['API error', ['purchase_error'], ['journey_server_errors', 'journey_unexpected'], '5xx, failed or unexpected answers'],
  ['duplicate', ['purchase_duplicate'], [], 'ALREADY_PURCHASED'],
  ['rate limited', ['purchase_rate_limited'], ['journey_rate_limited'], ['429 RATE_LIMITED', '429 RATE_LIMITED, retried']],
  ['queue full', [], ['journey_queue_full'], '503 QUEUE_FULL, retried'],
  ['abandoned', [], ['journey_abandoned'], 'held, then walked away (ABANDON_RATE)'],
  ['attempts exhausted', [], ['journey_attempts_exhausted'], '5 attempts, every hold expired'],
];
// A raffle's entrants who did not buy, and why: [label, counters, what it means].
const RAFFLE_REASONS = [
  ['not selected', ['raffle_not_selected'], 'the stock went to entrants drawn before them'],
  ['declined', ['raffle_declined'], 'selected, then let the hold run out (DECLINE_EVERY)'],
  ['late confirm', ['raffle_confirm_late'], '410 HOLD_EXPIRED: the hold had passed on'],
  ['timeout', ['raffle_gave_up'], 'no outcome within FOLLOW_TIMEOUT'],
  ['API error', ['raffle_server_errors', 'raffle_unexpected'], '5xx or unexpected answers'],
  ['rate limited', ['raffle_rate_limited'], '429 RATE_LIMITED, retried'],
];
// The four reasons the plans name are always listed; the others when the family has them.
const NAMED_REASONS = 5;
const TRENDS = [
  ['join → hold', 'journey_join_to_hold'],
  ['hold → confirm', 'journey_hold_to_confirm'],
  ['whole journey', 'journey_duration'],
  ['purchase request', 'http_req_duration{endpoint:purchase}'],
  ['window end → selected', 'raffle_draw_to_selected'],
  ['selected → confirm', 'raffle_selected_to_confirmed'],
];
// A read-only scenario's one request, when there is no trend above.
const READ_TREND = ['sale view request', 'http_req_duration{endpoint:sale_view}'];

// The VUs a run's scenarios (the floor aside) run at most, each scenario's beside it.
function scenarioVUs() {
  const rows = [];
  let scenarios = {};
  try {
    scenarios = exec.test.options.scenarios || {};
  } catch (_) {
    scenarios = {};
  }
  for (const [name, s] of Object.entries(scenarios)) {
    if (name === 'floor') continue;
    const targets = (s.stages || []).map((stage) => stage.target || 0);
    const vus = Math.max(s.vus || 0, s.maxVUs || 0, s.preAllocatedVUs || 0, s.startVUs || 0, ...targets);
    rows.push([name, vus]);
  }
  return rows;
}

export function summaryOf(data) {
  const m = data.metrics;
  const value = (name, key) => (m[name] ? m[name].values[key] : undefined);
  const journey = Object.keys(m).some((name) => name.startsWith('journey_'));
  const purchases = !journey && Object.keys(m).some((name) => /^purchase_[a-z_]+$/.test(name));
  // A raffle's entrants: units sold by confirms, entries as attempts, its own trends.
  const raffle = Object.keys(m).some((name) => name.startsWith('raffle_'));
  const scenarios = scenarioVUs();
  const summary = {
    duration: data.state.testRunDurationMs,
    vus: scenarios.length ? scenarios.reduce((sum, [, vus]) => sum + vus, 0) : value('vus_max', 'max'),
    scenarios,
    vusMax: value('vus_max', 'max'),
    requests: value('http_reqs', 'count'),
    attempts: undefined,
    buyers: value('journey_buyers', 'count'),
    successes: count(m, ['purchase_success', 'journey_purchased', 'raffle_units_sold']),
    reasons: [],
    trends: [],
    books: null,
  };
  if (journey) summary.attempts = value('journey_attempts', 'count') || 0;
  if (purchases) summary.attempts = count(m, Object.keys(m).filter((name) => /^purchase_[a-z_]+$/.test(name)));
  if (raffle) {
    summary.attempts = value('raffle_entered', 'count') || 0;
    summary.reasons = RAFFLE_REASONS.map(([label, names, meaning]) => ({ label, count: count(m, names), meaning }));
  }
  if (journey || purchases) {
    REASONS.forEach(([label, purchaseNames, journeyNames, meaning], index) => {
      const names = journey ? journeyNames : purchaseNames;
      if (!names.length && index >= NAMED_REASONS) return;
      const text = Array.isArray(meaning) ? meaning[journey ? 1 : 0] : meaning;
      summary.reasons.push({ label, count: names.length ? count(m, names) : undefined, meaning: text });
    });
  }
  for (const [label, name] of journey || purchases || raffle ? TRENDS : [READ_TREND]) {
    if (m[name] && m[name].values.avg !== undefined) {
      const v = m[name].values;
      summary.trends.push({ label, name, avg: v.avg, p95: v['p(95)'], p99: v['p(99)'] });
    }
  }
  if (m.verify_stock) {
    summary.books = {
      confirmed: value('verify_confirmed_orders', 'value'), available: value('verify_available', 'value'),
      held: value('verify_held', 'value'), stock: value('verify_stock', 'value'), walked: value('verify_buyers_walked', 'value'),
    };
  }
  return summary;
}

function vusText(s) {
  if (s.vus === undefined) return '–';
  const each = s.scenarios.length > 1 ? s.scenarios.map(([name, vus]) => `${name} ${int(vus)}`).join(' + ') : '';
  const notes = [each, s.vusMax !== undefined ? `${int(s.vusMax)} allocated` : ''].filter(Boolean);
  return `${int(s.vus)}${notes.length ? ` (${notes.join('; ')})` : ''}`;
}

const dots = (label, width) => `${label} ${'.'.repeat(Math.max(2, width - label.length))}`;

function summaryText(s) {
  const lines = ['', '  █ SUMMARY', ''];
  lines.push(`    ${dots('total VUs', 24)} ${vusText(s)}`);
  lines.push(`    ${dots('requests', 24)} ${int(s.requests || 0)} in ${formatDuration(s.duration)}`);
  if (s.attempts !== undefined) {
    lines.push(`    ${dots('attempts', 24)} ${int(s.attempts)}${s.buyers !== undefined ? ` (by ${int(s.buyers)} buyers)` : ''}`);
    lines.push(`    ${dots('successful purchases', 24)} ${int(s.successes || 0)}`);
    lines.push('    failures by reason');
    for (const r of s.reasons) {
      lines.push(`      ${dots(r.label, 22)} ${(r.count === undefined ? '–' : int(r.count)).padStart(7)}  ${r.count === undefined ? '(not in this checkout)' : r.meaning}`);
    }
  } else {
    lines.push('    (read-only scenario: no purchases)');
  }
  if (s.trends.length) {
    lines.push(`    ${'times'.padEnd(24)} ${'avg'.padStart(11)} ${'p95'.padStart(11)} ${'p99'.padStart(11)}`);
    for (const t of s.trends) {
      lines.push(`      ${t.label.padEnd(22)} ${formatDuration(t.avg).padStart(11)} ${formatDuration(t.p95).padStart(11)} ${formatDuration(t.p99).padStart(11)}`);
    }
  }
  if (s.books) lines.push('', `    books: ${booksLine(s.books)}`);
  return lines;
}

function thresholdText(thresholds) {
  const lines = ['', '  █ THRESHOLDS'];
  let metric = null;
  for (const t of thresholds) {
    if (t.metric !== metric) {
      metric = t.metric;
      lines.push('', `    ${metric}`);
    }
    lines.push(`    ${t.ok ? '✓' : '✗'} ${t.rule} ${t.measured}`);
  }
  if (!thresholds.length) lines.push('', '    none');
  return lines;
}

function textReport(endpoints, thresholds, counters, data) {
  const lines = [`${SCENARIO}: ${thresholds.every((t) => t.ok) ? 'thresholds PASS' : 'thresholds FAIL'}` +
    ` in ${formatDuration(data.state.testRunDurationMs)}`];
  if (Object.keys(endpoints).length) lines.push('  endpoint            requests  failed    p50 ms    p95 ms    p99 ms    max ms');
  for (const [name, r] of Object.entries(endpoints)) {
    lines.push(`  ${name.padEnd(18)} ${String(r.count).padStart(9)} ${(100 * r.failed).toFixed(2).padStart(6)}% ` +
      `${ms(r.med).padStart(9)} ${ms(r.p95).padStart(9)} ${ms(r.p99).padStart(9)} ${ms(r.max).padStart(9)}`);
  }
  lines.push(...thresholdText(thresholds));
  lines.push(...summaryText(summaryOf(data)));
  if (counters.length) lines.push('', `  counters: ${counters.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  return `${lines.join('\n')}\n`;
}

const escape = (text) => String(text).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

function summaryHtml(s) {
  const row = (label, value, note) => `<tr><td>${escape(label)}</td><td>${escape(value)}</td><td class="note">${escape(note || '')}</td></tr>`;
  const rows = [
    row('total VUs', vusText(s), 'the most VUs the scenarios run (the floor aside)'),
    row('requests', int(s.requests || 0), `in ${formatDuration(s.duration)}`),
  ];
  if (s.attempts !== undefined) {
    rows.push(row('attempts', int(s.attempts), s.buyers !== undefined ? `by ${int(s.buyers)} buyers` : ''));
    rows.push(row('successful purchases', int(s.successes || 0), ''));
    for (const r of s.reasons) {
      rows.push(row(`failed: ${r.label}`, r.count === undefined ? '–' : int(r.count), r.count === undefined ? 'not in this checkout' : r.meaning));
    }
  }
  const trends = s.trends.map((t) => `<tr><td>${escape(t.label)} <small>(${escape(t.name)})</small></td><td>${formatDuration(t.avg)}</td>` +
    `<td>${formatDuration(t.p95)}</td><td>${formatDuration(t.p99)}</td></tr>`).join('\n');
  const books = s.books ? `<p class="${booksVerdict(s.books) === 'PASS' ? 'ok' : 'fail'}"><b>Books:</b> ${escape(booksLine(s.books))}</p>` : '';
  return `<table>${rows.join('\n')}</table>
${trends ? `<h2>Journey times</h2><table><tr><th>trend</th><th>avg</th><th>p95</th><th>p99</th></tr>\n${trends}</table>` : ''}
${books}`;
}

function htmlReport(endpoints, thresholds, counters, data) {
  const passed = thresholds.every((t) => t.ok);
  const rows = Object.entries(endpoints).map(([name, r]) => `<tr${name === 'floor' ? ' class="floor"' : ''}>` +
    `<td>${escape(name)}${name === 'floor' ? ` <small>(${FLOOR_PATH}, same load: the generator's own latency)</small>` : ''}</td>` +
    `<td>${r.count}</td><td>${(100 * r.failed).toFixed(2)} %</td><td>${ms(r.avg)}</td><td>${ms(r.med)}</td>` +
    `<td>${ms(r.p90)}</td><td>${ms(r.p95)}</td><td>${ms(r.p99)}</td><td>${ms(r.max)}</td></tr>`).join('\n');
  const maxP99 = Math.max(1, ...Object.values(endpoints).map((r) => r.p99 || 0));
  const bars = Object.entries(endpoints).map(([name, r]) => `<div class="bar"><span>${escape(name)}</span>` +
    `<i style="width:${(100 * (r.p95 || 0)) / maxP99}%" class="p95"></i>` +
    `<i style="width:${(100 * ((r.p99 || 0) - (r.p95 || 0))) / maxP99}%" class="p99"></i>` +
    `<b>p95 ${ms(r.p95)} · p99 ${ms(r.p99)} ms</b></div>`).join('\n');
  const rules = thresholds.map((t) => `<li class="${t.ok ? 'ok' : 'fail'}">${t.ok ? '✓' : '✗'} ` +
    `<code>${escape(t.metric)}</code> ${escape(t.rule)} <b>${escape(t.measured)}</b></li>`).join('\n');
  const counts = counters.map(([k, v]) => `<tr><td>${escape(k)}</td><td>${escape(v)}</td></tr>`).join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escape(SCENARIO)} · flashsale k6 report</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;padding:0 12px;color:#1d2330}
h1{font-size:20px} h2{font-size:15px;margin-top:28px;text-transform:uppercase;color:#667085}
table{border-collapse:collapse;width:100%} td,th{padding:6px 8px;border-bottom:1px solid #e3e6eb;text-align:right}
td:first-child,th:first-child{text-align:left} tr.floor{color:#667085;background:#fafbfc} td.note{text-align:left;color:#667085}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;background:${passed ? '#12805c' : '#c9302c'}}
.bar{display:flex;align-items:center;gap:6px;margin:4px 0}.bar span{width:140px;flex:none}.bar i{display:block;height:14px}
.p95{background:#2f6fed}.p99{background:#9db8f5}.bar b{font-weight:400;color:#667085;margin-left:8px}
li.ok,p.ok{color:#12805c} li.fail,p.fail{color:#c9302c;font-weight:700} code{background:#eef1f5;padding:0 4px}
</style></head><body>
<h1>${escape(SCENARIO)} <span class="verdict">${passed ? 'PASS' : 'FAIL'}</span></h1>
<p>Against <code>${escape(BASE_URL)}</code>; ${formatDuration(data.state.testRunDurationMs)};
${new Date().toISOString()}. Times in milliseconds. The <em>floor</em> row is the same load against
<code>${FLOOR_PATH}</code>, a route that does nothing: what the load generator adds on its own.</p>
<h2>Thresholds</h2><ul>${rules || '<li>none</li>'}</ul>
<h2>Summary</h2>${summaryHtml(summaryOf(data))}
<h2>Latency by endpoint</h2>
<table><tr><th>endpoint</th><th>requests</th><th>failed</th><th>avg</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>
${rows}</table>
<h2>p95 and p99</h2>${bars}
<h2>Outcomes</h2><table>${counts || '<tr><td>none</td></tr>'}</table>
</body></html>
`;
}

// k6 calls this at the end of every run; the runner reads the files it writes.
export function handleSummary(data) {
  const endpoints = endpointsOf(data.metrics);
  const thresholds = thresholdsOf(data.metrics);
  const counters = countersOf(data.metrics);
  return {
    stdout: textReport(endpoints, thresholds, counters, data),
    [`${REPORT_DIR}/report.html`]: htmlReport(endpoints, thresholds, counters, data),
    [`${REPORT_DIR}/endpoints.json`]: JSON.stringify(endpoints, null, 2),
    [`${REPORT_DIR}/summary.json`]: JSON.stringify(data, null, 2),
  };
}
