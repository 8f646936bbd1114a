// raffle: a draw instead of first come, first served (README "Raffles (draws)").
//
// ENTRANTS buyers (default 1,000) enter a raffle of STOCK units (default 100) at once, in a
// window that closes ENTRY_WINDOW s (default 10) after the entrants start. Each entrant then
// waits for its turn on its live stream (MODE=listen, the default: one long request,
// GET .../entries/{userId}/events?until=selected, opened right after entering; a refused or
// broken stream falls back to polling) or polls GET .../entries/{userId} every
// POLLING_INTERVAL s (MODE=poll, from the window's end). A selected entrant confirms, except
// every DECLINE_EVERY-th entrant (default 5, by entrant number; 0: nobody), who lets the
// hold of HOLD_SECONDS (default 5) run out: it follows its stream to `expired`, and the units
// pass to the next entrant in draw order. The others learn `not_selected`.
//
// Thresholds: exactly min(STOCK, entrants who confirm) units sold, counted from the confirms'
// 201s (raffle_units_sold) and checked against the admin view (sold, and the raffle's
// purchased / expired / not_selected counts: raffle_view_mismatch == 0); every entry 202; no
// 5xx (raffle_server_errors == 0), no failed request, no unexpected answer, checks at 100 %.
// The teardown waits for the raffle to finish, then replays the draw from the seed the
// service shows: every entrant's drawPosition (GET .../entries/{userId}) must be its place in
// the order of md5(drawSeed || userId), then userId in byte order, computed here with k6's
// md5 (raffle_replay_mismatch == 0); then the audit. After it, the runner checks the sale's
// invariants in Postgres.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import crypto from 'k6/crypto';
import { Counter, Gauge, Trend } from 'k6/metrics';
import {
  audit, BASE_URL, batched, createSale, debugLog, envInt, jsonParams, lastStatus, retryAfter, runSku, saleAdminView,
} from '../lib/common.js';
import { formatDuration } from '../lib/format.js';
import { FLOOR, floor, floorBurst, handleSummary, withEndpoints } from '../lib/report.js';

export { floor, handleSummary };

const ENTRANTS = envInt('ENTRANTS', 1000);
const STOCK = envInt('STOCK', 100);
const ENTRY_WINDOW = envInt('ENTRY_WINDOW', 10);
const HOLD_SECONDS = envInt('HOLD_SECONDS', 5);
const DECLINE_EVERY = envInt('DECLINE_EVERY', 5);
const LISTEN = (__ENV.MODE || 'listen') === 'listen';
const POLL_INTERVAL = parseFloat(__ENV.POLLING_INTERVAL || '1');
// The longest an entrant waits for its outcome after the window's end.
const FOLLOW_TIMEOUT = envInt('FOLLOW_TIMEOUT', 180);
const DRAIN_WAIT = envInt('DRAIN_WAIT', HOLD_SECONDS * 4 + 60);
// The entrants start after the floor's burst.
const START = FLOOR ? 5 : 0;
const WALK_BATCH = 20;
const DECLINERS = DECLINE_EVERY > 0 ? Math.ceil(ENTRANTS / DECLINE_EVERY) : 0;
const EXPECTED_SOLD = Math.min(STOCK, ENTRANTS - DECLINERS);

const metrics = {
  entered: new Counter('raffle_entered'),
  unitsSold: new Counter('raffle_units_sold'),
  selected: new Counter('raffle_selected'),
  declined: new Counter('raffle_declined'),
  expiredSeen: new Counter('raffle_expired_seen'),
  notSelected: new Counter('raffle_not_selected'),
  confirmLate: new Counter('raffle_confirm_late'),
  rateLimited: new Counter('raffle_rate_limited'),
  streamFallbacks: new Counter('raffle_stream_fallbacks'),
  serverErrors: new Counter('raffle_server_errors'),
  unexpected: new Counter('raffle_unexpected'),
  gaveUp: new Counter('raffle_gave_up'),
  drawToSelected: new Trend('raffle_draw_to_selected', true),
  selectedToConfirmed: new Trend('raffle_selected_to_confirmed', true),
};

// The teardown's verification, as metrics so that the thresholds see it.
const verify = {
  viewMismatch: new Counter('raffle_view_mismatch'),
  replayMismatch: new Counter('raffle_replay_mismatch'),
  replayed: new Gauge('raffle_replay_entrants'),
  soldInView: new Gauge('raffle_view_sold'),
  drawMs: new Gauge('raffle_draw_ms'),
  finishMs: new Gauge('raffle_finish_ms'),
};

const LIMITS = ['p(95)<2000', 'p(99)<5000'];

export const options = {
  setupTimeout: '60s',
  teardownTimeout: `${DRAIN_WAIT + 120}s`,
  batch: WALK_BATCH,
  batchPerHost: WALK_BATCH,
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(ENTRANTS) } : {}, {
    entrants: {
      executor: 'per-vu-iterations',
      vus: ENTRANTS,
      iterations: 1,
      startTime: `${START}s`,
      maxDuration: `${ENTRY_WINDOW + FOLLOW_TIMEOUT + 30}s`,
      exec: 'entrant',
    },
  }),
  // The stream is a wait, not a latency: no limit on entry_events.
  thresholds: withEndpoints({
    raffle_entered: [`count==${ENTRANTS}`],
    raffle_units_sold: [`count==${EXPECTED_SOLD}`],
    raffle_view_mismatch: ['count==0'],
    raffle_replay_mismatch: ['count==0'],
    raffle_replay_entrants: [`value==${ENTRANTS}`],
    raffle_server_errors: ['count==0'],
    raffle_unexpected: ['count==0'],
    raffle_gave_up: ['count==0'],
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
    'http_req_duration{endpoint:raffle_enter}': LIMITS,
    'http_req_duration{endpoint:raffle_entry}': LIMITS,
    'http_req_duration{endpoint:raffle_confirm}': LIMITS,
  }, ['raffle_enter', 'entry_events', 'raffle_entry', 'raffle_confirm', 'floor', 'verify_entry', 'admin_sale', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('raffle');
  const endsAt = Date.now() + (START + ENTRY_WINDOW) * 1000;
  const sale = createSale(sku, STOCK, {
    checkout: 'raffle',
    holdSeconds: HOLD_SECONDS,
    endsAt: new Date(endsAt).toISOString(),
  });
  console.log(`raffle ${sku}: ${STOCK} units, ${ENTRANTS} entrants, entries close ${sale.endsAt}` +
    ` (${START + ENTRY_WINDOW} s after setup), holds of ${HOLD_SECONDS} s, ${DECLINERS} entrants decline` +
    ` if selected: ${EXPECTED_SOLD} units must sell`);
  return { sku, saleId: sale.id, endsAt, run: `${Date.now()}` };
}

const expect = (...statuses) => http.expectedStatuses(...statuses);

function userOf(data, index) {
  return `rf-${data.run}-${index}`;
}

function field(res, name) {
  try {
    return res.json(name);
  } catch (_) {
    return null;
  }
}

// Counts an answer no route documents; a 5xx also as a server error.
function unexpectedAnswer(res, what) {
  if (res.status >= 500) metrics.serverErrors.add(1);
  metrics.unexpected.add(1);
  console.warn(`${what}: unexpected ${res.status} ${res.body}`);
}

// Enters (202), retrying 429 after its Retry-After. Returns whether the entry was taken.
function enter(data, userId) {
  for (let tries = 0; tries < 10; tries++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.saleId}/entries`,
      JSON.stringify({ userId }),
      Object.assign(jsonParams('raffle_enter', userId), { responseCallback: expect(202, 429) }),
    );
    debugLog(`enter -> ${res.status} ${field(res, 'status') || field(res, 'code')}`);
    if (res.status === 429) {
      metrics.rateLimited.add(1);
      sleep(retryAfter(res, 1));
      continue;
    }
    const ok = check(res, { 'enter: 202 entered': (r) => r.status === 202 && field(r, 'status') === 'entered' });
    if (ok) metrics.entered.add(1);
    else unexpectedAnswer(res, `enter ${userId}`);
    return ok;
  }
  metrics.gaveUp.add(1);
  return false;
}

const FINAL = ['purchased', 'expired', 'not_selected', 'withdrawn'];

// Follows the entry until its status is one of `until` (or final): on the live stream
// (MODE=listen; `query` ends it early), then by polling. Returns the entry, or null at the
// deadline.
function follow(data, userId, until, query, deadline) {
  const done = (entry) => entry && (until.includes(entry.status) || FINAL.includes(entry.status));
  let entry = null;
  if (LISTEN) {
    const seconds = Math.max(1, Math.round((deadline - Date.now()) / 1000));
    const res = http.get(
      `${BASE_URL}/api/v1/sales/${data.saleId}/entries/${userId}/events${query}`,
      Object.assign(jsonParams('entry_events', userId), { timeout: `${seconds}s`, responseCallback: expect(200) }),
    );
    entry = res.status === 200 ? lastStatus(res.body) : null;
    debugLog(`stream -> ${res.status}, last status ${entry ? entry.status : 'none'} after ${formatDuration(res.timings.duration)}`);
    if (res.status >= 500) metrics.serverErrors.add(1);
    if (done(entry)) return entry;
    metrics.streamFallbacks.add(1);
  } else {
    const wait = (data.endsAt - Date.now()) / 1000;
    if (wait > 0) sleep(wait);
  }
  while (Date.now() < deadline) {
    const res = http.get(
      `${BASE_URL}/api/v1/sales/${data.saleId}/entries/${userId}`,
      Object.assign(jsonParams('raffle_entry', userId), { responseCallback: expect(200) }),
    );
    if (res.status === 200) {
      entry = res.json();
      if (done(entry)) return entry;
    } else {
      unexpectedAnswer(res, `entry ${userId}`);
    }
    sleep(POLL_INTERVAL * (0.8 + 0.4 * Math.random()));
  }
  return null;
}

// Confirms a selection: 201 buys its units. A confirm after the hold ran out (410) is told
// and counted; the units passed on.
function confirm(data, userId, selectedAt) {
  for (let tries = 0; tries < 10; tries++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.saleId}/entries/${userId}/confirm`,
      null,
      Object.assign(jsonParams('raffle_confirm', userId), { responseCallback: expect(201, 410, 429) }),
    );
    debugLog(`confirm -> ${res.status}`);
    if (res.status === 429) {
      metrics.rateLimited.add(1);
      sleep(retryAfter(res, 1));
      continue;
    }
    if (res.status === 410 && field(res, 'code') === 'HOLD_EXPIRED') {
      metrics.confirmLate.add(1);
      return;
    }
    const ok = check(res, {
      "confirm: 201 with the entrant's units": (r) =>
        r.status === 201 && field(r, 'userId') === userId && field(r, 'quantity') === 1,
    });
    if (!ok) {
      unexpectedAnswer(res, `confirm ${userId}`);
      return;
    }
    metrics.unitsSold.add(field(res, 'quantity'));
    metrics.selectedToConfirmed.add(Date.now() - selectedAt);
    return;
  }
  metrics.gaveUp.add(1);
}

export function entrant(data) {
  const index = exec.scenario.iterationInTest;
  const userId = userOf(data, index);
  if (!enter(data, userId)) return;
  const deadline = data.endsAt + FOLLOW_TIMEOUT * 1000;
  const entry = follow(data, userId, ['selected'], '?until=selected', deadline);
  if (!entry) {
    metrics.gaveUp.add(1);
    return;
  }
  if (entry.status === 'not_selected') {
    metrics.notSelected.add(1);
    return;
  }
  if (entry.status !== 'selected') {
    metrics.unexpected.add(1);
    console.warn(`entrant ${userId}: ended ${entry.status} without being selected`);
    return;
  }
  const selectedAt = Date.now();
  metrics.selected.add(1);
  metrics.drawToSelected.add(selectedAt - data.endsAt);
  check(entry, {
    'selected: a hold with its expiry and a place in the draw': (e) =>
      !!e.holdExpiresAt && e.drawPosition >= 1 && !!e.drawSeed,
  });
  if (DECLINE_EVERY > 0 && index % DECLINE_EVERY === 0) {
    // Walks away: the hold runs out and passes on; the stream tells `expired`.
    metrics.declined.add(1);
    const end = follow(data, userId, [], '', Date.now() + (HOLD_SECONDS + 60) * 1000);
    if (end && end.status === 'expired') metrics.expiredSeen.add(1);
    check(end, { 'declined: the hold expires': (e) => !!e && e.status === 'expired' });
    return;
  }
  confirm(data, userId, selectedAt);
}

// The raffle's admin view once nothing is left to do (finishedAt), or the last one read.
function finishedView(data) {
  const until = Date.now() + DRAIN_WAIT * 1000;
  let view = saleAdminView(data.saleId);
  while (view && !(view.raffle && view.raffle.finishedAt) && Date.now() < until) {
    sleep(1);
    view = saleAdminView(data.saleId);
  }
  return view;
}

// The draw replayed from its seed: each entrant's drawPosition against its place in the
// order of md5(seed || userId), then userId in byte order. Returns the mismatches.
function replay(data, seed) {
  const users = [];
  for (let i = 0; i < ENTRANTS; i++) users.push(userOf(data, i));
  const answers = batched(users.map((id) => ['GET', `${BASE_URL}/api/v1/sales/${data.saleId}/entries/${id}`, null,
    Object.assign(jsonParams('verify_entry', id), { responseCallback: expect(200) })]), [200], WALK_BATCH);
  const position = {};
  answers.forEach((res, i) => { position[users[i]] = res.json('drawPosition'); });
  const order = users
    .map((id) => ({ id, key: crypto.md5(seed + id, 'hex') }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  let mismatches = 0;
  order.forEach(({ id }, i) => {
    if (position[id] !== i + 1) {
      if (mismatches < 5) console.error(`replay: ${id} is number ${i + 1} by the seed, the service says ${position[id]}`);
      mismatches++;
    }
  });
  return mismatches;
}

export function teardown(data) {
  const view = finishedView(data);
  if (!view || !view.raffle) throw new Error(`raffle ${data.sku} is gone`);
  const r = view.raffle;
  const expectations = [
    ['sold', view.sold, EXPECTED_SOLD], ['held', view.held, 0], ['purchased', r.purchased, EXPECTED_SOLD],
    ['entrants', r.entrants, ENTRANTS], ['finished', !!r.finishedAt, true],
    ['purchased + expired + not selected', r.purchased + r.expired + r.notSelected, ENTRANTS],
  ];
  for (const [what, got, want] of expectations) {
    if (got !== want) {
      console.error(`raffle ${data.sku}: ${what} is ${got}, expected ${want}`);
      verify.viewMismatch.add(1);
    }
  }
  verify.viewMismatch.add(0);
  verify.soldInView.add(view.sold);
  const endsAt = data.endsAt;
  if (r.drawStartedAt && r.drawnAt) verify.drawMs.add(Date.parse(r.drawnAt) - Date.parse(r.drawStartedAt));
  if (r.finishedAt) verify.finishMs.add(Date.parse(r.finishedAt) - endsAt);
  const mismatches = replay(data, r.drawSeed);
  verify.replayMismatch.add(mismatches);
  verify.replayed.add(ENTRANTS);
  console.log(`raffle ${data.sku}: sold ${view.sold} of ${view.stock} (expected ${EXPECTED_SOLD}); entrants ${r.entrants}:` +
    ` purchased ${r.purchased}, expired ${r.expired}, not selected ${r.notSelected}, withdrawn ${r.withdrawn};` +
    ` draw ${r.drawStartedAt} -> ${r.drawnAt}, finished ${r.finishedAt ? formatDuration(Date.parse(r.finishedAt) - endsAt) : '?'}` +
    ` after endsAt; replay from seed ${r.drawSeed}: ${mismatches === 0 ? 'PASS' : `FAIL (${mismatches} positions differ)`}`);
  const report = audit(data.saleId);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}
