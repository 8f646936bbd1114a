// mixed-workload: VUS buyers (default 1,000) each fire one purchase at once against
// INITIAL_STOCK units, while POLL_VUS readers (default 500) poll the sale view. Same
// correctness thresholds as purchase-load: exactly the stock sells, no error.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, audit, createSale, envInt, jsonParams, purchaseOutcome, runSku } from '../lib/common.js';

const VUS = envInt('VUS', 1000);
const POLL_VUS = envInt('POLL_VUS', 500);
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
    pollers: { executor: 'constant-vus', vus: POLL_VUS, duration: '20s', exec: 'poll' },
    buyers: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, startTime: '5s', maxDuration: '60s', exec: 'buy' },
  },
  thresholds: {
    purchase_success: [`count==${Math.min(STOCK, VUS)}`],
    purchase_error: ['count==0'],
    'http_req_failed': ['rate<0.001'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
    'http_req_duration{endpoint:sale_view}': ['p(95)<500', 'p(99)<1000'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('mixed-workload');
  createSale(sku, STOCK);
  return { sku, run: `${Date.now()}` };
}

export function buy(data) {
  const userId = `mx-${data.run}-${__VU}`;
  const res = http.post(
    `${BASE_URL}/api/v1/sales/${data.sku}/purchases`,
    JSON.stringify({ userId }),
    Object.assign(jsonParams('purchase', userId), { responseCallback: http.expectedStatuses(201, 409, 429) }),
  );
  outcomes[purchaseOutcome(res)].add(1);
}

export function poll(data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: { endpoint: 'sale_view' } });
  check(res, { 'sale view is 200': (r) => r.status === 200 });
  sleep(0.5);
}

export function teardown(data) {
  const report = audit(data.sku);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}
