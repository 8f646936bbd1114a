// purchase-load: VUS buyers (default 1,000) each fire one instant purchase, all at once,
// against INITIAL_STOCK units (default 100). Exactly the stock must sell, with no error and no
// false duplicate; every answer is checked (checks at 100%). First the same burst hits
// /health/live (the floor: the load generator's own latency; FLOOR=0 skips it).
import { auditTeardown, buy, createSale, envInt, purchaseCounters, runSku } from '../lib/common.js';
import { FLOOR, floor, floorBurst, handleSummary, withEndpoints } from '../lib/report.js';

export { floor, handleSummary };

const VUS = envInt('VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 100);
const expectedSuccess = Math.min(STOCK, VUS);

const outcomes = purchaseCounters();

export const options = {
  setupTimeout: '60s',
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(VUS) } : {}, {
    burst: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: '120s', startTime: FLOOR ? '5s' : '0s' },
  }),
  thresholds: withEndpoints({
    purchase_success: [`count==${expectedSuccess}`],
    purchase_error: ['count==0'],
    purchase_duplicate: ['count==0'],
    checks: ['rate==1'],
    'http_req_failed{endpoint:purchase}': ['rate==0'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
  }, ['purchase', 'floor', 'sale_view', 'admin_audit']),
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
