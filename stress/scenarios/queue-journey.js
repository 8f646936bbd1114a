// queue-journey: buyers go through the queued checkout like people at a ticket drop.
// VUs ramp 0 -> 1,000 in 30 s, hold 1,000 for 1 min, ramp to 3,000, then 5,000, hold 5,000 for
// 2 min, ramp down; STAGE_SCALE scales every stage's target and duration (CI runs it small).
// Each iteration is one buyer: check the sale view (stop when sold out or ended), join, poll
// with exponential back-off that honours pollAfterMs, confirm when held (ABANDON_RATE of
// holders walk away instead), handle expiry, sold-out, 429 and 5xx, give up after
// JOURNEY_TIMEOUT seconds, at most 5 attempts. Teardown checks the books.
//
// MODE=listen (the default) waits for the hold on the buyer's live stream (one long request,
// GET .../queue/{userId}/events?until=held) instead of polling; a stream that cannot open or
// breaks falls back to polling. MODE=poll polls only. Before the journey, the floor: the peak
// number of VUs polling /health/live for FLOOR_DURATION (FLOOR=0 skips it).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';
import { audit, BASE_URL, createSale, envInt, jsonParams, retryAfter, runSku, saleAdminView, tags } from '../lib/common.js';
import { FLOOR, floor, handleSummary, withEndpoints } from '../lib/report.js';

export { handleSummary };

const SCALE = parseFloat(__ENV.STAGE_SCALE || '1');
const STOCK = envInt('INITIAL_STOCK', 100);
const HOLD_SECONDS = envInt('HOLD_SECONDS', 30);
const POLL_START = parseFloat(__ENV.POLL_INTERVAL || '1');
const ABANDON_RATE = parseFloat(__ENV.ABANDON_RATE || '0.1');
const JOURNEY_TIMEOUT = envInt('JOURNEY_TIMEOUT', 120);
const DRAIN_WAIT = envInt('DRAIN_WAIT', HOLD_SECONDS + 10);
const MAX_ATTEMPTS = 5;
const MAX_POLL = 10;
const LISTEN = (__ENV.MODE || 'listen') === 'listen';
const FLOOR_SECONDS = Math.max(5, Math.round(envInt('FLOOR_DURATION', 15) * SCALE));

function stage(seconds, target) {
  return {
    duration: `${Math.max(5, Math.round(seconds * SCALE))}s`,
    target: target === 0 ? 0 : Math.max(1, Math.round(target * SCALE)),
  };
}

const metrics = {
  joinToHold: new Trend('journey_join_to_hold', true),
  holdToConfirm: new Trend('journey_hold_to_confirm', true),
  journey: new Trend('journey_duration', true),
  joinSuccess: new Rate('join_success'),
  confirmSuccess: new Rate('confirm_success'),
  purchased: new Counter('journey_purchased'),
  soldOut: new Counter('journey_sold_out'),
  ended: new Counter('journey_sale_ended'),
  abandoned: new Counter('journey_abandoned'),
  holdExpired: new Counter('journey_hold_expired'),
  gaveUp: new Counter('journey_gave_up'),
  attemptsExhausted: new Counter('journey_attempts_exhausted'),
  rateLimited: new Counter('journey_rate_limited'),
  queueFull: new Counter('journey_queue_full'),
  serverErrors: new Counter('journey_server_errors'),
  unexpected: new Counter('journey_unexpected'),
  streamFallbacks: new Counter('journey_stream_fallbacks'),
};

const PEAK = Math.max(1, Math.round(5000 * SCALE));
const ENDPOINT_LIMITS = ['p(95)<2000', 'p(99)<5000'];

export const options = {
  setupTimeout: '60s',
  teardownTimeout: `${DRAIN_WAIT + 60}s`,
  scenarios: Object.assign(FLOOR ? {
    floor: { executor: 'constant-vus', vus: PEAK, duration: `${FLOOR_SECONDS}s`, exec: 'floorPoll' },
  } : {}, {
    journey: {
      executor: 'ramping-vus',
      startVUs: 0,
      startTime: FLOOR ? `${FLOOR_SECONDS + 5}s` : '0s',
      stages: [stage(30, 1000), stage(60, 1000), stage(30, 3000), stage(30, 5000), stage(120, 5000), stage(30, 0)],
      gracefulRampDown: '30s',
      gracefulStop: '30s',
    },
  }),
  // Latency limits per endpoint: the live stream is one long wait, not a latency.
  thresholds: withEndpoints({
    http_req_failed: ['rate<0.01'],
    'http_req_duration{endpoint:queue_join}': ENDPOINT_LIMITS,
    'http_req_duration{endpoint:queue_status}': ENDPOINT_LIMITS,
    'http_req_duration{endpoint:queue_confirm}': ENDPOINT_LIMITS,
    'http_req_duration{endpoint:sale_view}': ENDPOINT_LIMITS,
    journey_unexpected: ['count==0'],
  }, ['queue_join', 'queue_events', 'queue_status', 'queue_confirm', 'sale_view', 'floor', 'admin_sale', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function floorPoll() {
  floor();
  sleep(0.5 + Math.random());
}

export function setup() {
  const sku = runSku('queue-journey');
  createSale(sku, STOCK, { checkout: 'queued', holdSeconds: HOLD_SECONDS });
  return { sku, run: `${Date.now()}` };
}

const expect = (...statuses) => http.expectedStatuses(...statuses);

function saleOver(data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: tags('sale_view') });
  if (res.status !== 200) return false;
  if (res.json('soldOut')) return 'sold_out';
  const state = res.json('state');
  return state === 'ended' || state === 'cancelled' ? 'ended' : false;
}

function backoff(attempt) {
  return Math.min(MAX_POLL, 0.5 * Math.pow(2, attempt)) * (0.5 + Math.random());
}

// Joins, retrying 429, QUEUE_FULL and 5xx with back-off. Returns the entry, or an outcome.
function join(data, userId, deadline) {
  for (let tries = 0; Date.now() < deadline; tries++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.sku}/queue`,
      JSON.stringify({ userId }),
      Object.assign(jsonParams('queue_join', userId), { responseCallback: expect(202, 409, 429, 503) }),
    );
    if (res.status === 202) {
      metrics.joinSuccess.add(true);
      return { entry: res.json() };
    }
    const code = res.status < 500 || res.status === 503 ? safeCode(res) : null;
    if (res.status === 409) {
      metrics.joinSuccess.add(false);
      if (code === 'ALREADY_PURCHASED') return { outcome: 'purchased' };
      if (code === 'SOLD_OUT') return { outcome: 'sold_out' };
      if (code === 'SALE_NOT_ACTIVE') return { outcome: 'ended' };
      metrics.unexpected.add(1);
      return { outcome: 'unexpected' };
    }
    if (res.status === 429) metrics.rateLimited.add(1);
    else if (code === 'QUEUE_FULL') metrics.queueFull.add(1);
    else metrics.serverErrors.add(1);
    sleep(res.status === 429 || code === 'QUEUE_FULL' ? retryAfter(res, 1) : backoff(tries));
  }
  return { outcome: 'gave_up' };
}

function safeCode(res) {
  try {
    return res.json('code');
  } catch (_) {
    return null;
  }
}

// The last status a buyer's live stream sent (its body holds every message).
function lastStatus(body) {
  const lines = (body || '').split('\n').filter((line) => line.startsWith('data:'));
  if (!lines.length) return null;
  try {
    return JSON.parse(lines[lines.length - 1].slice(5));
  } catch (_) {
    return null;
  }
}

// Waits on the live stream until held or the journey ends; null when it could not tell
// (the stream was refused, broke or outlived the deadline): then the caller polls.
function listenForHold(data, userId, deadline) {
  const seconds = Math.max(1, Math.round((deadline - Date.now()) / 1000));
  const res = http.get(
    `${BASE_URL}/api/v1/sales/${data.sku}/queue/${userId}/events?until=held`,
    Object.assign(jsonParams('queue_events', userId), { timeout: `${seconds}s`, responseCallback: expect(200) }),
  );
  const last = res.status === 200 ? lastStatus(res.body) : null;
  if (!last || last.status === 'queued') {
    metrics.streamFallbacks.add(1);
    return null;
  }
  return last;
}

// Listens (MODE=listen) or polls until held (returns the entry) or an outcome ends the attempt.
function waitForHold(data, userId, entry, deadline) {
  let interval = POLL_START;
  let current = entry;
  if (LISTEN && current.status === 'queued') {
    current = listenForHold(data, userId, deadline) || current;
  }
  while (Date.now() < deadline) {
    if (current.status === 'held') return { entry: current };
    if (current.status === 'sold_out') return { outcome: 'sold_out' };
    if (current.status === 'closed') return { outcome: 'ended' };
    if (current.status === 'purchased') return { outcome: 'purchased' };
    if (current.status === 'expired' || current.status === 'left') return { outcome: 'expired' };
    const hint = (current.pollAfterMs || 1000) / 1000;
    if (hint < interval / 2) interval = hint; // the server says we are near the front
    sleep(Math.min(MAX_POLL, Math.max(interval, hint)) * (0.8 + 0.4 * Math.random()));
    interval = Math.min(MAX_POLL, interval * 1.5);
    const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}/queue/${userId}`, Object.assign(jsonParams('queue_status', userId), { responseCallback: expect(200) }));
    if (res.status === 200) current = res.json();
    else if (res.status >= 500) metrics.serverErrors.add(1);
  }
  return { outcome: 'gave_up' };
}

function confirm(data, userId, heldAt, deadline) {
  for (let tries = 0; Date.now() < deadline; tries++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.sku}/queue/${userId}/confirm`,
      null,
      Object.assign(jsonParams('queue_confirm', userId), { responseCallback: expect(201, 409, 410, 429) }),
    );
    if (res.status === 201) {
      metrics.confirmSuccess.add(true);
      metrics.holdToConfirm.add(Date.now() - heldAt);
      return 'purchased';
    }
    if (res.status === 410) {
      metrics.confirmSuccess.add(false);
      metrics.holdExpired.add(1);
      return 'expired';
    }
    if (res.status === 409) {
      if (safeCode(res) === 'ALREADY_PURCHASED') return 'purchased';
      metrics.confirmSuccess.add(false);
      metrics.unexpected.add(1);
      return 'unexpected';
    }
    if (res.status === 429) {
      metrics.rateLimited.add(1);
      sleep(retryAfter(res, 1));
    } else {
      metrics.serverErrors.add(1);
      sleep(backoff(tries));
    }
  }
  return 'gave_up';
}

function attempt(data, userId, deadline) {
  const joinedAt = Date.now();
  const joined = join(data, userId, deadline);
  if (joined.outcome) return joined.outcome;
  const held = waitForHold(data, userId, joined.entry, deadline);
  if (held.outcome) return held.outcome;
  const heldAt = Date.now();
  metrics.joinToHold.add(heldAt - joinedAt);
  if (Math.random() < ABANDON_RATE) return 'abandoned';
  sleep(0.2 + Math.random());
  return confirm(data, userId, heldAt, deadline);
}

export default function (data) {
  const over = saleOver(data);
  if (over) {
    sleep(3 + 2 * Math.random());
    return;
  }
  const userId = `qj-${data.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const started = Date.now();
  const deadline = started + JOURNEY_TIMEOUT * 1000;
  let outcome = 'expired';
  let attempts = 0;
  while (outcome === 'expired' && attempts < MAX_ATTEMPTS) {
    attempts += 1;
    outcome = attempt(data, userId, deadline);
  }
  if (outcome === 'expired') outcome = 'attempts_exhausted';
  const counter = {
    purchased: metrics.purchased,
    sold_out: metrics.soldOut,
    ended: metrics.ended,
    abandoned: metrics.abandoned,
    gave_up: metrics.gaveUp,
    attempts_exhausted: metrics.attemptsExhausted,
  }[outcome];
  if (counter) counter.add(1);
  metrics.journey.add(Date.now() - started, { outcome });
}

export function teardown(data) {
  // Wait for pending holds to be confirmed or to run out.
  const until = Date.now() + DRAIN_WAIT * 1000;
  let view = saleAdminView(data.sku);
  while (view && view.held > 0 && Date.now() < until) {
    sleep(1);
    view = saleAdminView(data.sku);
  }
  if (!view) throw new Error(`sale ${data.sku} is gone`);
  const books = view.sold + view.held + view.available;
  console.log(`sale ${data.sku}: stock=${view.stock} sold=${view.sold} held=${view.held} available=${view.available} queued=${view.queueLength}`);
  if (books > view.stock || view.sold > view.stock) {
    throw new Error(`OVERBOOKING: purchases ${view.sold} + held ${view.held} + available ${view.available} > stock ${view.stock}`);
  }
  if (books < view.stock) {
    throw new Error(`UNDERSELLING: purchases ${view.sold} + held ${view.held} + available ${view.available} < stock ${view.stock}`);
  }
  const report = audit(data.sku);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}
