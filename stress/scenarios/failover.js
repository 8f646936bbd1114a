// failover: the load of stress/failover.sh. Instant purchases and queue journeys spread over
// several instances (BASE_URLS), at a fixed arrival rate, so that an outage shows as a gap in
// time rather than as fewer requests. Every response is logged as one JSON line on the console
// (the runner passes --log-format raw --console-output FILE) with its start and end times, so
// the runner can tell when purchases came back and which ones were acknowledged:
//   {"k": kind, "u": userId, "i": instance, "s": status, "c": code, "ou": outcomeUnknown,
//    "ra": Retry-After, "t0": start ms, "t": end ms, "n": attempt}
// kind: purchase, join, poll, confirm. A 503 with outcomeUnknown is retried with the same
// user on the next instance, as a client behind a load balancer would (safe: the retry
// answers 201, or 409 ALREADY_PURCHASED when the first try had committed). A queued buyer
// joins, polls until held, then confirms (CONFIRM_RATE of them) or lets the hold expire.
//
// Knobs: BASE_URLS (comma-separated), SKU (instant sale), QUEUE_SKU (queued sale),
// DURATION (s, 30), PURCHASE_RATE (purchases/s over all instances, 100), QUEUE_RATE
// (queued buyers/s, 8), CONFIRM_RATE (0.7), RUN (a prefix for user ids).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { envInt, jsonParams } from '../lib/common.js';

const BASES = (__ENV.BASE_URLS || 'http://127.0.0.1:8080').split(',').map((b) => b.replace(/\/$/, ''));
const SKU = __ENV.SKU;
const QUEUE_SKU = __ENV.QUEUE_SKU;
const DURATION = envInt('DURATION', 30);
const PURCHASE_RATE = envInt('PURCHASE_RATE', 100);
const QUEUE_RATE = envInt('QUEUE_RATE', 8);
const CONFIRM_RATE = parseFloat(__ENV.CONFIRM_RATE || '0.7');
const RUN = __ENV.RUN || `${Date.now()}`;
// A buyer tries up to 10 times in 30 s, long enough to outlast a failover (10-15 s).
const ATTEMPTS = 10;
const RETRY_SECONDS = 30;
// How long one queued buyer keeps trying (join, wait for a hold, confirm).
const JOURNEY_SECONDS = 25;

export const options = {
  scenarios: Object.assign(
    PURCHASE_RATE > 0 ? {
      purchase: {
        executor: 'constant-arrival-rate', exec: 'purchase', rate: PURCHASE_RATE, timeUnit: '1s',
        duration: `${DURATION}s`, preAllocatedVUs: 20, maxVUs: 400, gracefulStop: `${RETRY_SECONDS}s`,
      },
    } : {},
    QUEUE_SKU && QUEUE_RATE > 0 ? {
      queue: {
        executor: 'constant-arrival-rate', exec: 'queue', rate: QUEUE_RATE, timeUnit: '1s',
        duration: `${DURATION}s`, preAllocatedVUs: 20, maxVUs: 400, gracefulStop: `${JOURNEY_SECONDS}s`,
      },
    } : {},
  ),
  // Every status is expected: the runner judges the log, not k6.
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

const anyStatus = http.expectedStatuses({ min: 100, max: 599 });

function field(res, name) {
  try {
    return res.json(name);
  } catch (_) {
    return undefined;
  }
}

// Sends one request and logs it; returns the response.
function send(kind, userId, instance, attempt, call) {
  const t0 = Date.now();
  const res = call(BASES[instance]);
  const line = { k: kind, u: userId, i: instance, s: res.status, t0, t: Date.now(), n: attempt };
  if (res.status >= 400) {
    line.c = field(res, 'code') || null;
    if (field(res, 'outcomeUnknown')) line.ou = true;
    const ra = res.headers['Retry-After'];
    if (ra !== undefined) line.ra = ra;
  }
  if (res.status === 0) line.e = res.error_code;
  console.log(JSON.stringify(line));
  return res;
}

function params(endpoint, userId) {
  return Object.assign(jsonParams(endpoint, userId), { timeout: '15s', responseCallback: anyStatus });
}

function pause(res, fallback) {
  const value = parseInt(res.headers['Retry-After'] || '', 10);
  // Honour Retry-After, but keep the test short: at most 3 s.
  return Math.min(3, Number.isFinite(value) && value > 0 ? value : fallback);
}

// Retries a write while the answer says "try again" (503, or a lost connection), each time
// on the next instance. Returns the last response.
function write(kind, userId, first, deadline, call) {
  let res;
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    const instance = (first + attempt - 1) % BASES.length;
    res = send(kind, userId, instance, attempt, call);
    if (res.status !== 503 && res.status !== 0) return res;
    if (Date.now() >= deadline) return res;
    sleep(pause(res, 1) * (0.5 + Math.random() / 2));
  }
  return res;
}

export function purchase() {
  const n = exec.scenario.iterationInTest;
  const userId = `p-${RUN}-${n}`;
  const body = JSON.stringify({ userId });
  write('purchase', userId, n % BASES.length, Date.now() + RETRY_SECONDS * 1000, (base) =>
    http.post(`${base}/api/v1/sales/${SKU}/purchases`, body, params('purchase', userId)));
}

export function queue() {
  const n = exec.scenario.iterationInTest;
  const userId = `q-${RUN}-${n}`;
  const home = n % BASES.length;
  const deadline = Date.now() + JOURNEY_SECONDS * 1000;
  const body = JSON.stringify({ userId });
  const joined = write('join', userId, home, deadline, (base) =>
    http.post(`${base}/api/v1/sales/${QUEUE_SKU}/queue`, body, params('queue_join', userId)));
  if (joined.status !== 202) return;
  let status = field(joined, 'status');
  let wait = (field(joined, 'pollAfterMs') || 500) / 1000;
  while (status === 'queued' && Date.now() < deadline) {
    sleep(Math.min(1, Math.max(0.3, wait)));
    const res = send('poll', userId, home, 1, (base) =>
      http.get(`${base}/api/v1/sales/${QUEUE_SKU}/queue/${userId}`, params('queue_status', userId)));
    if (res.status === 200) {
      status = field(res, 'status');
      wait = (field(res, 'pollAfterMs') || 500) / 1000;
    } else {
      wait = pause(res, 1);
    }
  }
  if (status !== 'held' || Math.random() >= CONFIRM_RATE) return; // the hold runs out
  sleep(0.2 + Math.random() / 2);
  write('confirm', userId, home, deadline, (base) =>
    http.post(`${base}/api/v1/sales/${QUEUE_SKU}/queue/${userId}/confirm`, null, params('queue_confirm', userId)));
}
