// purchase-load: VUS buyers (default 1,000) each fire one instant purchase, all at once,
// against INITIAL_STOCK units (default 100). Exactly the stock must sell, with no error.
import http from 'k6/http';
import { Counter } from 'k6/metrics';
import { BASE_URL, audit, createSale, envInt, jsonParams, purchaseOutcome, runSku } from '../lib/common.js';

const VUS = envInt('VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 100);
const expectedSuccess = Math.min(STOCK, VUS);

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
    burst: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: '120s' },
  },
  thresholds: {
    purchase_success: [`count==${expectedSuccess}`],
    purchase_error: ['count==0'],
    'http_req_failed{endpoint:purchase}': ['rate==0'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('purchase-load');
  createSale(sku, STOCK);
  return { sku, run: `${Date.now()}` };
}

export default function (data) {
  const userId = `pl-${data.run}-${__VU}`;
  const res = http.post(
    `${BASE_URL}/api/v1/sales/${data.sku}/purchases`,
    JSON.stringify({ userId }),
    Object.assign(jsonParams('purchase', userId), { responseCallback: http.expectedStatuses(201, 409, 429) }),
  );
  outcomes[purchaseOutcome(res)].add(1);
}

export function teardown(data) {
  const report = audit(data.sku);
  console.log(`sale ${data.sku}: audit ${report && report.passed ? 'PASS' : 'FAIL'}`);
  if (!report || !report.passed) {
    throw new Error(`invariant audit failed for ${data.sku}: ${JSON.stringify(report)}`);
  }
}
