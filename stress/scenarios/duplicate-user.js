// duplicate-user: DEDUP_USERS users (default 10) each fire DEDUP_REQUESTS purchases at once
// (default 100). Exactly one purchase per user may succeed; every other answer must be
// ALREADY_PURCHASED or RATE_LIMITED, never an error.
import { auditTeardown, buy, createSale, envInt, purchaseCounters, runSku } from '../lib/common.js';
import { FLOOR, floor, floorBurst, handleSummary, withEndpoints } from '../lib/report.js';

export { floor, handleSummary };

const USERS = envInt('DEDUP_USERS', 10);
const REQUESTS = envInt('DEDUP_REQUESTS', 100);
const STOCK = envInt('INITIAL_STOCK', 100);

const outcomes = purchaseCounters();

export const options = {
  setupTimeout: '60s',
  // The floor: the same burst against /health/live first (FLOOR=0 skips it).
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(USERS * REQUESTS) } : {}, {
    duplicates: { executor: 'per-vu-iterations', vus: USERS * REQUESTS, iterations: 1, maxDuration: '120s', startTime: FLOOR ? '5s' : '0s' },
  }),
  thresholds: withEndpoints({
    purchase_success: [`count==${Math.min(USERS, STOCK)}`],
    purchase_error: ['count==0'],
    purchase_sold_out: ['count==0'],
    'http_req_failed{endpoint:purchase}': ['rate==0'],
  }, ['purchase', 'floor', 'sale_view', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('duplicate-user');
  createSale(sku, STOCK);
  return { sku, run: `${Date.now()}` };
}

export default function (data) {
  const userId = `dup-${data.run}-${(__VU - 1) % USERS}`;
  buy(data.sku, userId, outcomes);
}

export function teardown(data) {
  auditTeardown(data);
}
