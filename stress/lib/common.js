// Shared helpers for the flashsale k6 scenarios: configuration from the environment, admin
// calls, sale setup and outcome classification.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
export const ADMIN_API_KEY = __ENV.ADMIN_API_KEY || 'dev-admin-key';

export function envInt(name, fallback) {
  const value = parseInt(__ENV[name] || '', 10);
  return Number.isFinite(value) ? value : fallback;
}

// DEBUG=1: one VU logs its journey step by step (the plan's logVUProgress): VU 1 of the
// scenario, i.e. the VU that runs its first iteration (k6 numbers VUs across scenarios and the
// floor takes the low numbers), or k6's VU DEBUG_VU when set. Every other VU stays quiet, so
// the log stays readable at 5,000 VUs.
const DEBUG = __ENV.DEBUG === '1' || __ENV.DEBUG === 'true';
const DEBUG_VU = envInt('DEBUG_VU', 0);
let debugVU = false;

export function debugging() {
  if (!DEBUG) return false;
  if (DEBUG_VU) return exec.vu.idInTest === DEBUG_VU;
  if (!debugVU && exec.scenario.name !== 'floor' && exec.scenario.iterationInTest === 0) debugVU = true;
  return debugVU;
}

export function debugLog(message) {
  if (debugging()) console.log(`[VU ${exec.vu.idInTest} ${exec.scenario.name} #${exec.vu.iterationInScenario}] ${message}`);
}

// A request's tags: `endpoint` for the per-endpoint figures, and `name` (k6's URL grouping)
// so that URLs with user ids and skus in them do not each become a time series of their own
// (400,000 of them once, and 2.4 GB of k6 memory).
export function tags(endpoint) {
  return { endpoint, name: endpoint };
}

export function adminParams(endpoint) {
  return {
    headers: { Authorization: `Bearer ${ADMIN_API_KEY}`, 'Content-Type': 'application/json' },
    tags: tags(endpoint),
  };
}

// With BUYER_TOKEN_SECRET set (the service's buyer-token secret), every buyer request
// carries an HS256 JWT for its user, signed here the way a shop would sign it.
const TOKEN_SECRET = __ENV.BUYER_TOKEN_SECRET || '';
const tokenCache = {};

export function buyerToken(userId) {
  const now = Math.floor(Date.now() / 1000);
  const cached = tokenCache[userId];
  if (cached && cached.exp - now > 60) return cached.token;
  const exp = now + 3600;
  const header = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');
  const payload = encoding.b64encode(JSON.stringify({ sub: userId, exp }), 'rawurl');
  const signature = crypto.hmac('sha256', TOKEN_SECRET, `${header}.${payload}`, 'base64rawurl');
  const token = `${header}.${payload}.${signature}`;
  tokenCache[userId] = { token, exp };
  return token;
}

export function jsonParams(endpoint, userId) {
  const headers = { 'Content-Type': 'application/json' };
  if (TOKEN_SECRET && userId) headers.Authorization = `Bearer ${buyerToken(userId)}`;
  return { headers, tags: tags(endpoint) };
}

// A whole-second Retry-After, or the fallback.
export function retryAfter(res, fallback) {
  const value = parseInt(res.headers['Retry-After'] || '', 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

// A sku unique to this run (or TEST_SKU), so runs never see each other's buyers.
export function runSku(scenario) {
  return __ENV.TEST_SKU || `${scenario}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
}

// Creates a sale (deleting an old one with the same sku first) and waits until its public
// view shows `state` (default active; `scheduled` for a sale that opens later).
export function createSale(sku, stock, extra, state = 'active') {
  const params = Object.assign(adminParams('admin_delete_sale'), { responseCallback: http.expectedStatuses(200, 404) });
  http.del(`${BASE_URL}/api/v1/admin/sales/${sku}`, null, params);
  const body = Object.assign({ sku, name: `k6 ${sku}`, stock }, extra || {});
  const res = http.post(`${BASE_URL}/api/v1/admin/sales`, JSON.stringify(body), adminParams('admin_create_sale'));
  if (res.status !== 201) {
    throw new Error(`creating sale ${sku} failed: ${res.status} ${res.body}`);
  }
  for (let i = 0; i < 100; i++) {
    const view = http.get(`${BASE_URL}/api/v1/sales/${sku}`, { tags: tags('sale_view') });
    if (view.status === 200 && view.json('state') === state) {
      return view.json();
    }
    sleep(0.1);
  }
  throw new Error(`sale ${sku} never became ${state}`);
}

export function saleAdminView(sku) {
  const res = http.get(`${BASE_URL}/api/v1/admin/sales/${sku}`, adminParams('admin_sale'));
  return res.status === 200 ? res.json() : null;
}

export function audit(sku) {
  const res = http.get(`${BASE_URL}/api/v1/admin/sales/${sku}/audit`, adminParams('admin_audit'));
  return res.status === 200 ? res.json() : null;
}

// The outcome of a purchase response: success, sold_out, not_active, duplicate,
// rate_limited, timeout (no answer in k6's request timeout), or error (anything unexpected,
// 5xx included).
export function purchaseOutcome(res) {
  if (res.status === 201) return 'success';
  if (res.status === 0 && res.error_code === 1050) return 'timeout';
  let code = null;
  try {
    code = res.json('code');
  } catch (_) {
    code = null;
  }
  if (res.status === 409 && code === 'SOLD_OUT') return 'sold_out';
  if (res.status === 409 && code === 'SALE_NOT_ACTIVE') return 'not_active';
  if (res.status === 409 && code === 'ALREADY_PURCHASED') return 'duplicate';
  if (res.status === 429 && code === 'RATE_LIMITED') return 'rate_limited';
  return 'error';
}

// Counters per purchase outcome; call once, in the init context of a script.
export function purchaseCounters() {
  return {
    success: new Counter('purchase_success'),
    sold_out: new Counter('purchase_sold_out'),
    not_active: new Counter('purchase_not_active'),
    duplicate: new Counter('purchase_duplicate'),
    rate_limited: new Counter('purchase_rate_limited'),
    timeout: new Counter('purchase_timeout'),
    error: new Counter('purchase_error'),
  };
}

// One instant purchase for userId, counted by outcome and checked: the answer is one the
// API documents for a purchase, and a 201 carries this buyer's purchase (`checks` must stay
// at 100%).
export function buy(sku, userId, counters) {
  const res = http.post(
    `${BASE_URL}/api/v1/sales/${sku}/purchases`,
    JSON.stringify({ userId }),
    Object.assign(jsonParams('purchase', userId), { responseCallback: http.expectedStatuses(201, 409, 429) }),
  );
  const outcome = purchaseOutcome(res);
  counters[outcome].add(1);
  check(res, {
    'purchase: 201, or 409/429 with a documented code': () => outcome !== 'error' && outcome !== 'timeout',
    "purchase: a 201 carries the buyer's purchase": (r) => r.status !== 201 || (r.json('userId') === userId && !!r.json('id')),
  });
  debugLog(`purchase for ${userId} -> ${res.status} ${outcome} in ${res.timings.duration.toFixed(1)} ms`);
  return outcome;
}

// Teardown shared by the purchase scenarios: the audit route must pass.
export function auditTeardown(data) {
  const report = audit(data.sku);
  console.log(`sale ${data.sku}: audit ${report && report.passed ? 'PASS' : 'FAIL'}`);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}

// The last message a buyer's live stream sent (its body holds every message): the JSON of
// its last `data:` line, or null.
export function lastStatus(body) {
  const lines = (body || '').split('\n').filter((line) => line.startsWith('data:'));
  if (!lines.length) return null;
  try {
    return JSON.parse(lines[lines.length - 1].slice(5));
  } catch (_) {
    return null;
  }
}

// Sends `requests` ([method, url, body, params]) `size` at a time (a teardown's walk over
// every buyer); retries an answer outside `statuses` a few times, then fails the teardown.
export function batched(requests, statuses, size) {
  const answers = [];
  for (let i = 0; i < requests.length; i += size) {
    const chunk = requests.slice(i, i + size);
    let got = http.batch(chunk);
    for (let retry = 0; retry < 5 && got.some((res) => !statuses.includes(res.status)); retry++) {
      sleep(1);
      got = http.batch(chunk);
    }
    const bad = got.find((res) => !statuses.includes(res.status));
    if (bad) throw new Error(`verification walk: ${bad.request.method} ${bad.url} answered ${bad.status} ${bad.body}`);
    answers.push(...got);
  }
  return answers;
}
