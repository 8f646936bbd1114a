// mixed-workload: VUS buyers (default 1,000) each fire one purchase at once against
// INITIAL_STOCK units, while POLL_VUS readers (default 500) poll the sale view. Same
// correctness thresholds as purchase-load: exactly the stock sells, no error, no false
// duplicate, every answer checked (checks at 100%).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { auditTeardown, BASE_URL, buy, createSale, envInt, purchaseCounters, runSku, tags } from '../lib/common.js';
import { FLOOR, floor, floorBurst, handleSummary, withEndpoints } from '../lib/report.js';

export { floor, handleSummary };

const VUS = envInt('VUS', 1000);
const POLL_VUS = envInt('POLL_VUS', 500);
const STOCK = envInt('INITIAL_STOCK', 100);

const outcomes = purchaseCounters();

export const options = {
  setupTimeout: '60s',
  // The floor: the buyers' burst against /health/live first (FLOOR=0 skips it).
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(VUS) } : {}, {
    pollers: { executor: 'constant-vus', vus: POLL_VUS, duration: '20s', exec: 'poll', startTime: FLOOR ? '5s' : '0s' },
    buyers: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, startTime: FLOOR ? '10s' : '5s', maxDuration: '60s', exec: 'buyer' },
  }),
  thresholds: withEndpoints({
    purchase_success: [`count==${Math.min(STOCK, VUS)}`],
    purchase_error: ['count==0'],
    purchase_duplicate: ['count==0'],
    checks: ['rate==1'],
    'http_req_failed': ['rate<0.001'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
    'http_req_duration{endpoint:sale_view}': ['p(95)<500', 'p(99)<1000'],
  }, ['purchase', 'sale_view', 'floor', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('mixed-workload');
  createSale(sku, STOCK);
  return { sku, run: `${Date.now()}` };
}

export function buyer(data) {
  const userId = `mx-${data.run}-${__VU}`;
  buy(data.sku, userId, outcomes);
}

export function poll(data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: tags('sale_view') });
  check(res, { 'sale view is 200': (r) => r.status === 200 });
  sleep(0.5);
}

export function teardown(data) {
  auditTeardown(data);
}
