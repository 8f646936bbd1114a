// Every run's report: per-endpoint latency in the summary and in a self-contained HTML file,
// with the load generator's own floor beside it.
//
// k6's web dashboard writes nothing for a run shorter than its aggregation period, so the
// bursts had no report; handleSummary runs at the end of every run, however short. The
// runner passes REPORT_DIR; without it the files land in the working directory.
import http from 'k6/http';
import { BASE_URL } from './common.js';

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

function thresholdsOf(metrics) {
  const rows = [];
  for (const [name, metric] of Object.entries(metrics)) {
    for (const [rule, result] of Object.entries(metric.thresholds || {})) {
      if (/^(max>=0|rate>=0|count>=0)$/.test(rule)) continue;
      rows.push({ metric: name, rule, ok: result.ok });
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

function textReport(endpoints, thresholds, counters, data) {
  const lines = [`${SCENARIO}: ${thresholds.every((t) => t.ok) ? 'thresholds PASS' : 'thresholds FAIL'}` +
    ` in ${(data.state.testRunDurationMs / 1000).toFixed(1)} s`];
  lines.push('  endpoint            requests  failed    p50 ms    p95 ms    p99 ms    max ms');
  for (const [name, r] of Object.entries(endpoints)) {
    lines.push(`  ${name.padEnd(18)} ${String(r.count).padStart(9)} ${(100 * r.failed).toFixed(2).padStart(6)}% ` +
      `${ms(r.med).padStart(9)} ${ms(r.p95).padStart(9)} ${ms(r.p99).padStart(9)} ${ms(r.max).padStart(9)}`);
  }
  for (const t of thresholds) lines.push(`  ${t.ok ? 'ok  ' : 'FAIL'} ${t.metric}: ${t.rule}`);
  if (counters.length) lines.push(`  ${counters.map(([k, v]) => `${k}=${v}`).join(' ')}`);
  return `${lines.join('\n')}\n`;
}

const escape = (text) => String(text).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

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
  const rules = thresholds.map((t) => `<li class="${t.ok ? 'ok' : 'fail'}">${t.ok ? 'PASS' : 'FAIL'} ` +
    `<code>${escape(t.metric)}</code> ${escape(t.rule)}</li>`).join('\n');
  const counts = counters.map(([k, v]) => `<tr><td>${escape(k)}</td><td>${escape(v)}</td></tr>`).join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escape(SCENARIO)} · flashsale k6 report</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;padding:0 12px;color:#1d2330}
h1{font-size:20px} h2{font-size:15px;margin-top:28px;text-transform:uppercase;color:#667085}
table{border-collapse:collapse;width:100%} td,th{padding:6px 8px;border-bottom:1px solid #e3e6eb;text-align:right}
td:first-child,th:first-child{text-align:left} tr.floor{color:#667085;background:#fafbfc}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;background:${passed ? '#12805c' : '#c9302c'}}
.bar{display:flex;align-items:center;gap:6px;margin:4px 0}.bar span{width:140px;flex:none}.bar i{display:block;height:14px}
.p95{background:#2f6fed}.p99{background:#9db8f5}.bar b{font-weight:400;color:#667085;margin-left:8px}
li.ok{color:#12805c} li.fail{color:#c9302c;font-weight:700} code{background:#eef1f5;padding:0 4px}
</style></head><body>
<h1>${escape(SCENARIO)} <span class="verdict">${passed ? 'PASS' : 'FAIL'}</span></h1>
<p>Against <code>${escape(BASE_URL)}</code>; ${(data.state.testRunDurationMs / 1000).toFixed(1)} s;
${new Date().toISOString()}. Times in milliseconds. The <em>floor</em> row is the same load against
<code>${FLOOR_PATH}</code>, a route that does nothing: what the load generator adds on its own.</p>
<h2>Latency by endpoint</h2>
<table><tr><th>endpoint</th><th>requests</th><th>failed</th><th>avg</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>
${rows}</table>
<h2>p95 and p99</h2>${bars}
<h2>Thresholds</h2><ul>${rules || '<li>none</li>'}</ul>
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
