// purchase-load: VUS buyers (default 1,000) each fire one instant purchase, all at once,
// against INITIAL_STOCK units (default 100). Exactly the stock must sell, with no error.
import { auditTeardown, buy, createSale, envInt, purchaseCounters, runSku } from '../lib/common.js';

const VUS = envInt('VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 100);
const expectedSuccess = Math.min(STOCK, VUS);

const outcomes = purchaseCounters();

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
  buy(data.sku, userId, outcomes);
}

export function teardown(data) {
  auditTeardown(data);
}
