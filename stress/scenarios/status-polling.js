// status-polling: POLL_VUS readers (default 1,000) poll the public sale view of a live sale
// for POLL_DURATION (default 30s), each every POLL_INTERVAL seconds (default 0.5). Read-only.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, createSale, envInt, runSku } from '../lib/common.js';

const VUS = envInt('POLL_VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 100);
const INTERVAL = parseFloat(__ENV.POLL_INTERVAL || '0.5');

export const options = {
  setupTimeout: '60s',
  scenarios: {
    pollers: { executor: 'constant-vus', vus: VUS, duration: __ENV.POLL_DURATION || '30s' },
  },
  thresholds: {
    'http_req_failed{endpoint:sale_view}': ['rate<0.001'],
    'http_req_duration{endpoint:sale_view}': ['p(50)<200', 'p(95)<500', 'p(99)<1000'],
    checks: ['rate>0.999'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('status-polling');
  createSale(sku, STOCK);
  return { sku };
}

export default function (data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: { endpoint: 'sale_view' } });
  check(res, { 'sale view is 200 with a state': (r) => r.status === 200 && !!r.json('state') });
  sleep(INTERVAL * (0.5 + Math.random()));
}
