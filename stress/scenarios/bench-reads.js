// bench-reads (used by stress/bench.sh): 1,000 pollers (POLL_VUS) read the public sale view
// at a fixed total rate (READ_RATE per second, default 10,000) for BENCH_DURATION. A fixed
// arrival rate measures latency at that load instead of the load generator's ceiling.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, createSale, envInt, runSku, tags } from '../lib/common.js';

const VUS = envInt('POLL_VUS', 1000);

export const options = {
  setupTimeout: '60s',
  scenarios: {
    pollers: {
      executor: 'constant-arrival-rate',
      rate: envInt('READ_RATE', 10000),
      timeUnit: '1s',
      duration: __ENV.BENCH_DURATION || '15s',
      preAllocatedVUs: VUS,
      maxVUs: VUS,
    },
  },
  thresholds: {
    'http_req_failed{endpoint:sale_view}': ['rate<0.001'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('bench-reads');
  createSale(sku, envInt('INITIAL_STOCK', 100));
  return { sku };
}

export default function (data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: tags('sale_view') });
  check(res, { 'sale view is 200': (r) => r.status === 200 });
}
