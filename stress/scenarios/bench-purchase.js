// bench-purchase (used by stress/bench.sh): VUS buyers buy in a loop for BENCH_DURATION
// (default 15s), each purchase by a new user, against a stock too large to sell out
// (INITIAL_STOCK, default 10,000,000). Measures committed purchases per second.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import { BASE_URL, audit, createSale, envInt, jsonParams, purchaseOutcome, runSku } from '../lib/common.js';

const VUS = envInt('VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 10000000);

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
    buyers: { executor: 'constant-vus', vus: VUS, duration: __ENV.BENCH_DURATION || '15s', gracefulStop: '10s' },
  },
  thresholds: {
    purchase_error: ['count==0'],
    purchase_sold_out: ['count==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('bench-purchase');
  createSale(sku, STOCK);
  return { sku, run: `${Date.now()}` };
}

export default function (data) {
  const userId = `b-${data.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
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
