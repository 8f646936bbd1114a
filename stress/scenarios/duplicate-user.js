// duplicate-user: DEDUP_USERS users (default 10) each fire DEDUP_REQUESTS purchases at once
// (default 100). Exactly one purchase per user may succeed; every other answer must be
// ALREADY_PURCHASED or RATE_LIMITED, never an error.
import http from 'k6/http';
import { Counter } from 'k6/metrics';
import { BASE_URL, audit, createSale, envInt, jsonParams, purchaseOutcome, runSku } from '../lib/common.js';

const USERS = envInt('DEDUP_USERS', 10);
const REQUESTS = envInt('DEDUP_REQUESTS', 100);
const STOCK = envInt('INITIAL_STOCK', 100);

const outcomes = {
  success: new Counter('purchase_success'),
  sold_out: new Counter('purchase_sold_out'),
  not_active: new Counter('purchase_not_active'),
  duplicate: new Counter('purchase_duplicate'),
  rate_limited: new Counter('purchase_rate_limited'),
  error: new Counter('purchase_error'),
};

export const options = {
  setupTimeout: '60s',
  scenarios: {
    duplicates: { executor: 'per-vu-iterations', vus: USERS * REQUESTS, iterations: 1, maxDuration: '120s' },
  },
  thresholds: {
    purchase_success: [`count==${Math.min(USERS, STOCK)}`],
    purchase_error: ['count==0'],
    purchase_sold_out: ['count==0'],
    'http_req_failed{endpoint:purchase}': ['rate==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('duplicate-user');
  createSale(sku, STOCK);
  return { sku, run: `${Date.now()}` };
}

export default function (data) {
  const userId = `dup-${data.run}-${(__VU - 1) % USERS}`;
  const res = http.post(
    `${BASE_URL}/api/v1/sales/${data.sku}/purchases`,
    JSON.stringify({ userId }),
    Object.assign(jsonParams('purchase', userId), { responseCallback: http.expectedStatuses(201, 409, 429) }),
  );
  outcomes[purchaseOutcome(res)].add(1);
}

export function teardown(data) {
  const report = audit(data.sku);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}
