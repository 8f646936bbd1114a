// duplicate-user: VUS purchase requests in all (default 1,000), fired at once and spread
// evenly over DEDUP_USERS users (default 10: 100 each). Without VUS, DEDUP_REQUESTS (per
// user) sets the total as DEDUP_USERS x DEDUP_REQUESTS. Exactly one purchase per user may
// succeed; every other answer must be ALREADY_PURCHASED or RATE_LIMITED, never an error, and
// the latency thresholds are purchase-load's (p50 < 500 ms, p95 < 1 s, p99 < 2 s).
import { auditTeardown, buy, createSale, envInt, purchaseCounters, runSku } from '../lib/common.js';
import { FLOOR, floor, floorBurst, handleSummary, withEndpoints } from '../lib/report.js';

export { floor, handleSummary };

const USERS = envInt('DEDUP_USERS', 10);
const TOTAL = __ENV.VUS ? envInt('VUS', 1000) : (__ENV.DEDUP_REQUESTS ? USERS * envInt('DEDUP_REQUESTS', 100) : 1000);
const STOCK = envInt('INITIAL_STOCK', 100);

const outcomes = purchaseCounters();

export const options = {
  setupTimeout: '60s',
  // The floor: the same burst against /health/live first (FLOOR=0 skips it).
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(TOTAL) } : {}, {
    duplicates: { executor: 'per-vu-iterations', vus: TOTAL, iterations: 1, maxDuration: '120s', startTime: FLOOR ? '5s' : '0s' },
  }),
  thresholds: withEndpoints({
    purchase_success: [`count==${Math.min(USERS, TOTAL, STOCK)}`],
    purchase_error: ['count==0'],
    purchase_sold_out: ['count==0'],
    checks: ['rate==1'],
    'http_req_failed{endpoint:purchase}': ['rate==0'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
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
