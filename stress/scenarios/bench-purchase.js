// bench-purchase (used by stress/bench.sh): VUS buyers buy in a loop for BENCH_DURATION
// (default 15s), each purchase by a new user, against a stock too large to sell out
// (INITIAL_STOCK, default 10,000,000). Measures committed purchases per second.
import exec from 'k6/execution';
import { auditTeardown, buy, createSale, envInt, purchaseCounters, runSku } from '../lib/common.js';

const VUS = envInt('VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 10000000);

const outcomes = purchaseCounters();

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
  buy(data.sku, userId, outcomes);
}

export function teardown(data) {
  auditTeardown(data);
}
