// status-polling: POLL_VUS readers (default 1,000) poll the public sale view of a live sale
// for POLL_DURATION (default 30s), each every POLL_INTERVAL seconds (default 0.5). Read-only.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, createSale, envInt, runSku, tags } from '../lib/common.js';
import { FLOOR, floor, handleSummary, withEndpoints } from '../lib/report.js';

export { handleSummary };

const VUS = envInt('POLL_VUS', 1000);
const STOCK = envInt('INITIAL_STOCK', 100);
const INTERVAL = parseFloat(__ENV.POLL_INTERVAL || '0.5');

export const options = {
  setupTimeout: '60s',
  // The floor: the same readers polling /health/live for FLOOR_DURATION first (FLOOR=0 skips).
  scenarios: Object.assign(FLOOR ? {
    floor: { executor: 'constant-vus', vus: VUS, duration: __ENV.FLOOR_DURATION || '10s', exec: 'floorPoll' },
  } : {}, {
    pollers: { executor: 'constant-vus', vus: VUS, duration: __ENV.POLL_DURATION || '30s', startTime: FLOOR ? (__ENV.FLOOR_DURATION || '10s') : '0s' },
  }),
  thresholds: withEndpoints({
    'http_req_failed{endpoint:sale_view}': ['rate<0.001'],
    'http_req_duration{endpoint:sale_view}': ['p(50)<200', 'p(95)<500', 'p(99)<1000'],
    checks: ['rate>0.999'],
  }, ['sale_view', 'floor']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('status-polling');
  createSale(sku, STOCK);
  return { sku };
}

export default function (data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: tags('sale_view') });
  check(res, { 'sale view is 200 with a state': (r) => r.status === 200 && !!r.json('state') });
  sleep(INTERVAL * (0.5 + Math.random()));
}

export function floorPoll() {
  floor();
  sleep(INTERVAL * (0.5 + Math.random()));
}
