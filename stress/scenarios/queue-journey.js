// queue-journey: buyers go through the queued checkout like people at a ticket drop (the k6
// plan "1,000-5,000 concurrent buyers with automatic verification", adapted to this API).
//
// Stages (STAGE_SCALE scales every target and duration, each stage at least 5 s; CI: 0.05):
//   ramp 0 -> 1,000 VUs in 30 s; hold 1,000 for 1 min; ramp to 3,000 over 1 min;
//   ramp to 5,000 over 1 min; hold 5,000 for 2 min; ramp down to 0 over 1 min.
//
// The sale: INITIAL_STOCK units (100), holds of HOLD_SECONDS (30), a window of
// FLASH_SALE_DURATION s (600). It opens SALE_START_DELAY s (5) after the first buyer can
// arrive: 5 s after setup with FLOOR=0, after the floor and its pause otherwise, so every run
// has buyers in the pre-queue and the opening's shuffle under load.
//
// Each iteration is one buyer. Before every join and re-join it reads the sale's public view:
// sold out or ended ends the buyer, and from then on this VU stops trying (no request until
// the run ends). Otherwise it joins, waits for its hold on its live stream (MODE=listen, the
// default: one long request, GET .../queue/{userId}/events?until=held; a refused or broken
// stream falls back to polling) or polls (MODE=poll) with exponential back-off from
// POLLING_INTERVAL s (2), x1.5, at most 10 s, reset by a pollAfterMs hint below half of it;
// confirms when held (ABANDON_RATE, 0.1, walk away instead); an expired hold joins again (at
// most 5 attempts); 429, QUEUE_FULL and 5xx are retried with back-off; a buyer gives up after
// JOURNEY_TIMEOUT s (300: 5 minutes).
//
// Teardown waits up to DRAIN_WAIT s for live holds to resolve, then walks every buyer's
// purchases through GET /api/v1/users/{userId}/purchases (not the admin view) and prints one
// line: PASS, OVERBOOKING DETECTED or UNDERSELLING DETECTED, with confirmed orders + remaining
// + held against the starting quantity; thresholds fail the run on either detection. The
// admin audit runs last. DEBUG=1: VU 1 logs its journey step by step.
//
// Before the journey, the floor: the peak number of VUs polling /health/live for
// FLOOR_DURATION (FLOOR=0 skips it).
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Gauge, Rate, Trend } from 'k6/metrics';
import {
  audit, BASE_URL, batched, createSale, debugLog, envInt, jsonParams, lastStatus, retryAfter, runSku, tags,
} from '../lib/common.js';
import { formatDuration } from '../lib/format.js';
import { booksLine, booksVerdict, FLOOR, floor, handleSummary, withEndpoints } from '../lib/report.js';

export { handleSummary };

const SCALE = parseFloat(__ENV.STAGE_SCALE || '1');
const STOCK = envInt('INITIAL_STOCK', 100);
const HOLD_SECONDS = envInt('HOLD_SECONDS', 30);
const POLL_START = parseFloat(__ENV.POLLING_INTERVAL || '2');
const SALE_DURATION = envInt('FLASH_SALE_DURATION', 600);
const SALE_START_DELAY = envInt('SALE_START_DELAY', 5);
const ABANDON_RATE = parseFloat(__ENV.ABANDON_RATE || '0.1');
const JOURNEY_TIMEOUT = envInt('JOURNEY_TIMEOUT', 300);
const DRAIN_WAIT = envInt('DRAIN_WAIT', HOLD_SECONDS + 10);
const MAX_ATTEMPTS = 5;
const MAX_POLL = 10;
// A VU that has stopped trying sleeps this long per iteration, sending nothing.
const STOPPED_SLEEP = 5;
const LISTEN = (__ENV.MODE || 'listen') === 'listen';
const FLOOR_SECONDS = Math.max(5, Math.round(envInt('FLOOR_DURATION', 15) * SCALE));
// The journey starts after the floor and a 5 s pause; the sale opens SALE_START_DELAY later.
const JOURNEY_START = FLOOR ? FLOOR_SECONDS + 5 : 0;

function stage(seconds, target) {
  return {
    duration: `${Math.max(5, Math.round(seconds * SCALE))}s`,
    target: target === 0 ? 0 : Math.max(1, Math.round(target * SCALE)),
  };
}

const STAGES = [stage(30, 1000), stage(60, 1000), stage(60, 3000), stage(60, 5000), stage(120, 5000), stage(60, 0)];

const metrics = {
  joinToHold: new Trend('journey_join_to_hold', true),
  holdToConfirm: new Trend('journey_hold_to_confirm', true),
  journey: new Trend('journey_duration', true),
  joinSuccess: new Rate('join_success'),
  confirmSuccess: new Rate('confirm_success'),
  buyers: new Counter('journey_buyers'),
  attempts: new Counter('journey_attempts'),
  saleChecks: new Counter('journey_sale_checks'),
  statusPolls: new Counter('journey_status_polls'),
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

// The teardown's verification, as metrics so the summary and the thresholds see it.
const verify = {
  confirmed: new Gauge('verify_confirmed_orders'),
  available: new Gauge('verify_available'),
  held: new Gauge('verify_held'),
  stock: new Gauge('verify_stock'),
  walked: new Gauge('verify_buyers_walked'),
  overbooking: new Counter('overbooking_detected'),
  underselling: new Counter('underselling_detected'),
};

const PEAK = Math.max(1, Math.round(5000 * SCALE));
// Every VU id the run can hand out: the floor's VUs and the journey's (k6 numbers VUs from 1
// and never allocates more than the scenarios' sum). The teardown walks them all.
const VU_BOUND = (FLOOR ? PEAK : 0) + Math.max(...STAGES.map((s) => s.target));
const ENDPOINT_LIMITS = ['p(95)<2000', 'p(99)<5000'];
// The teardown's walk: parallel requests per batch.
const WALK_BATCH = 20;

export const options = {
  setupTimeout: '60s',
  teardownTimeout: `${DRAIN_WAIT + 180}s`,
  batch: WALK_BATCH,
  batchPerHost: WALK_BATCH,
  scenarios: Object.assign(FLOOR ? {
    floor: { executor: 'constant-vus', vus: PEAK, duration: `${FLOOR_SECONDS}s`, exec: 'floorPoll' },
  } : {}, {
    journey: {
      executor: 'ramping-vus',
      startVUs: 0,
      startTime: `${JOURNEY_START}s`,
      stages: STAGES,
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
    overbooking_detected: ['count==0'],
    underselling_detected: ['count==0'],
  }, ['queue_join', 'queue_events', 'queue_status', 'queue_confirm', 'sale_view', 'floor', 'verify_queue', 'verify_purchases', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function floorPoll() {
  floor();
  sleep(0.5 + Math.random());
}

export function setup() {
  const sku = runSku('queue-journey');
  const startsAt = Date.now() + (JOURNEY_START + SALE_START_DELAY) * 1000;
  const endsAt = startsAt + SALE_DURATION * 1000;
  const sale = createSale(sku, STOCK, {
    checkout: 'queued',
    holdSeconds: HOLD_SECONDS,
    startsAt: new Date(startsAt).toISOString(),
    endsAt: new Date(endsAt).toISOString(),
  }, SALE_START_DELAY > 0 ? 'scheduled' : 'active');
  console.log(`sale ${sku}: ${STOCK} units, opens ${sale.startsAt} (${JOURNEY_START + SALE_START_DELAY} s after setup,` +
    ` ${SALE_START_DELAY} s after the first buyer can arrive), ends ${sale.endsAt} (${SALE_DURATION} s later)`);
  return { sku, saleId: sale.id, stock: STOCK, endsAt, run: `${Date.now()}` };
}

const expect = (...statuses) => http.expectedStatuses(...statuses);

// VU state. `stopped`: why this VU stopped trying (the sale sold out or ended), or null.
// `buyerSeq`: this VU's next buyer number; it moves on only once a buyer got a queue entry,
// so the teardown can walk each VU's buyers 0, 1, 2... until one is not in the queue.
let stopped = null;
let buyerSeq = 0;

function userIdOf(data, vu, seq) {
  return `qj-${data.run}-${vu}-${seq}`;
}

// The plan's checkSaleStatus: the public view before every join and re-join. Returns
// 'sold_out', 'ended' or false (the sale may still sell: scheduled or active).
function checkSaleStatus(data) {
  if (Date.now() >= data.endsAt) {
    debugLog(`sale window over (${new Date(data.endsAt).toISOString()})`);
    return 'ended';
  }
  metrics.saleChecks.add(1);
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.saleId}`, { tags: tags('sale_view'), responseCallback: expect(200, 404) });
  if (res.status === 404) return 'ended';
  if (res.status !== 200) return false;
  const view = res.json();
  debugLog(`sale ${view.state}: available ${view.available}, held ${view.held}, sold ${view.sold}, soldOut ${view.soldOut}, queue ${view.queueLength}`);
  if (view.soldOut) return 'sold_out';
  return ['ended', 'cancelled', 'archived'].includes(view.state) ? 'ended' : false;
}

function backoff(attempt) {
  return Math.min(MAX_POLL, 0.5 * Math.pow(2, attempt)) * (0.5 + Math.random());
}

function safeCode(res) {
  try {
    return res.json('code');
  } catch (_) {
    return null;
  }
}

// Joins, retrying 429, QUEUE_FULL and 5xx with back-off. Returns the entry, or an outcome.
function join(data, userId, deadline) {
  for (let tries = 0; Date.now() < deadline; tries++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.saleId}/queue`,
      JSON.stringify({ userId }),
      Object.assign(jsonParams('queue_join', userId), { responseCallback: expect(202, 409, 429, 503) }),
    );
    const code = res.status === 202 ? null : safeCode(res);
    debugLog(`join -> ${res.status}${code ? ` ${code}` : ''}${res.status === 202 ? ` ${res.json('status')}` +
      `${res.json('prequeue') ? ' (pre-queue)' : ''}${res.json('position') !== undefined ? `, position ${res.json('position')}` : ''}` : ''}`);
    if (res.status === 202) {
      metrics.joinSuccess.add(true);
      return { entry: res.json() };
    }
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


// Waits on the live stream until held or the journey ends; null when it could not tell
// (the stream was refused, broke or outlived the deadline): then the caller polls.
function listenForHold(data, userId, deadline) {
  const seconds = Math.max(1, Math.round((deadline - Date.now()) / 1000));
  debugLog(`listening on the live stream (at most ${formatDuration(seconds * 1000)})`);
  const res = http.get(
    `${BASE_URL}/api/v1/sales/${data.saleId}/queue/${userId}/events?until=held`,
    Object.assign(jsonParams('queue_events', userId), { timeout: `${seconds}s`, responseCallback: expect(200) }),
  );
  const last = res.status === 200 ? lastStatus(res.body) : null;
  debugLog(`stream -> ${res.status}, last status ${last ? last.status : 'none'} after ${formatDuration(res.timings.duration)}`);
  if (!last || last.status === 'queued') {
    metrics.streamFallbacks.add(1);
    return null;
  }
  return last;
}

// The plan's waitForHold: listens (MODE=listen) or polls with exponential back-off until
// held (returns the entry) or an outcome ends the attempt.
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
    if (current.status === 'expired' || current.status === 'left') {
      if (current.status === 'expired') metrics.holdExpired.add(1);
      return { outcome: 'expired' };
    }
    const hint = (current.pollAfterMs || 1000) / 1000;
    if (hint < interval / 2) interval = hint; // the server says we are near the front
    const pause = Math.min(MAX_POLL, Math.max(interval, hint)) * (0.8 + 0.4 * Math.random());
    debugLog(`${current.status}${current.position !== undefined ? `, position ${current.position}` : ''}` +
      `${current.prequeue ? ' (pre-queue)' : ''}; next poll in ${formatDuration(pause * 1000)}`);
    sleep(pause);
    interval = Math.min(MAX_POLL, interval * 1.5);
    metrics.statusPolls.add(1);
    const res = http.get(`${BASE_URL}/api/v1/sales/${data.saleId}/queue/${userId}`, Object.assign(jsonParams('queue_status', userId), { responseCallback: expect(200) }));
    if (res.status === 200) current = res.json();
    else if (res.status >= 500) metrics.serverErrors.add(1);
  }
  return { outcome: 'gave_up' };
}

function confirm(data, userId, heldAt, deadline) {
  for (let tries = 0; Date.now() < deadline; tries++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.saleId}/queue/${userId}/confirm`,
      null,
      Object.assign(jsonParams('queue_confirm', userId), { responseCallback: expect(201, 409, 410, 429) }),
    );
    debugLog(`confirm -> ${res.status}${res.status === 201 ? '' : ` ${safeCode(res)}`}`);
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

// One join -> hold -> confirm. `joined` is set once the buyer has a queue entry.
function attempt(data, userId, deadline, joined) {
  const joinedAt = Date.now();
  const entry = join(data, userId, deadline);
  if (entry.outcome) return entry.outcome;
  joined.value = true;
  const held = waitForHold(data, userId, entry.entry, deadline);
  if (held.outcome) return held.outcome;
  const heldAt = Date.now();
  metrics.joinToHold.add(heldAt - joinedAt);
  debugLog(`held after ${formatDuration(heldAt - joinedAt)}, until ${held.entry.holdExpiresAt}`);
  if (Math.random() < ABANDON_RATE) {
    debugLog('walks away from the hold (ABANDON_RATE)');
    return 'abandoned';
  }
  sleep(0.2 + Math.random());
  return confirm(data, userId, heldAt, deadline);
}

export default function (data) {
  if (stopped) {
    // The sale is over for this VU: it stops trying and sends nothing more.
    sleep(STOPPED_SLEEP);
    return;
  }
  const vu = exec.vu.idInTest;
  const userId = userIdOf(data, vu, buyerSeq);
  const started = Date.now();
  const deadline = started + JOURNEY_TIMEOUT * 1000;
  const joined = { value: false };
  metrics.buyers.add(1);
  debugLog(`buyer ${userId} starts`);
  let outcome = 'expired';
  let attempts = 0;
  while (outcome === 'expired' && attempts < MAX_ATTEMPTS) {
    const over = checkSaleStatus(data);
    if (over) {
      outcome = over;
      break;
    }
    attempts += 1;
    metrics.attempts.add(1);
    outcome = attempt(data, userId, deadline, joined);
  }
  if (joined.value) buyerSeq += 1;
  if (outcome === 'expired') outcome = 'attempts_exhausted';
  if (outcome === 'sold_out' || outcome === 'ended') stopped = outcome;
  const counter = {
    purchased: metrics.purchased,
    sold_out: metrics.soldOut,
    ended: metrics.ended,
    abandoned: metrics.abandoned,
    gave_up: metrics.gaveUp,
    attempts_exhausted: metrics.attemptsExhausted,
  }[outcome];
  if (counter) counter.add(1);
  if (attempts > 0) metrics.journey.add(Date.now() - started, { outcome });
  debugLog(`buyer ${userId}: ${outcome} after ${attempts} attempt(s) in ${formatDuration(Date.now() - started)}` +
    `${stopped ? `; the sale is ${stopped === 'sold_out' ? 'sold out' : 'over'}: this VU stops trying` : ''}`);
}

function publicView(data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.saleId}`, { tags: tags('sale_view') });
  return res.status === 200 ? res.json() : null;
}


// Every buyer of the run, VU by VU (each VU's buyers are numbered 0, 1, 2... until one is not
// in the queue), and the confirmed orders of this sale among their purchases.
function walkBuyers(data) {
  const buyers = [];
  let pending = [];
  for (let vu = 1; vu <= VU_BOUND; vu++) pending.push({ vu, seq: 0 });
  while (pending.length) {
    const ids = pending.map((b) => userIdOf(data, b.vu, b.seq));
    const answers = batched(ids.map((id) => ['GET', `${BASE_URL}/api/v1/sales/${data.saleId}/queue/${id}`, null,
      Object.assign(jsonParams('verify_queue', id), { responseCallback: expect(200, 404) })]), [200, 404], WALK_BATCH);
    const next = [];
    answers.forEach((res, i) => {
      if (res.status !== 200) return;
      buyers.push(ids[i]);
      next.push({ vu: pending[i].vu, seq: pending[i].seq + 1 });
    });
    pending = next;
  }
  const answers = batched(buyers.map((id) => ['GET', `${BASE_URL}/api/v1/users/${id}/purchases`, null,
    Object.assign(jsonParams('verify_purchases', id), { responseCallback: expect(200) })]), [200], WALK_BATCH);
  let confirmed = 0;
  for (const res of answers) confirmed += res.json().filter((p) => p.saleId === data.saleId).length;
  return { buyers: buyers.length, confirmed };
}

export function teardown(data) {
  // Wait for pending holds to be confirmed or to run out (writes are committed before their
  // answer: nothing else is pending).
  const until = Date.now() + DRAIN_WAIT * 1000;
  let view = publicView(data);
  while (view && view.held > 0 && Date.now() < until) {
    sleep(1);
    view = publicView(data);
  }
  if (!view) throw new Error(`sale ${data.sku} is gone`);
  const walk = walkBuyers(data);
  // No VU is left to confirm: the walk's count stands; a hold running out meanwhile only
  // moves a unit from held to remaining.
  view = publicView(data) || view;
  const books = { confirmed: walk.confirmed, available: view.available, held: view.held, stock: data.stock, walked: walk.buyers };
  verify.confirmed.add(books.confirmed);
  verify.available.add(books.available);
  verify.held.add(books.held);
  verify.stock.add(books.stock);
  verify.walked.add(books.walked);
  const verdict = booksVerdict(books);
  verify.overbooking.add(verdict === 'OVERBOOKING DETECTED' ? 1 : 0);
  verify.underselling.add(verdict === 'UNDERSELLING DETECTED' ? 1 : 0);
  console.log(`sale ${data.sku}: ${booksLine(books)}; the public view: sold=${view.sold} held=${view.held}` +
    ` available=${view.available} stock=${view.stock} queued=${view.queueLength}`);
  const report = audit(data.sku);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}
