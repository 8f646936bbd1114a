// mixed-workload: VUS buyers (default 1,000) each fire one purchase at once against
// INITIAL_STOCK units, while POLL_VUS readers (default 500) poll the sale view. Same
// correctness thresholds as purchase-load: exactly the stock sells, no error, no false
// duplicate, every answer checked (checks at 100%).
//
// Beside it, a multi-unit drop: MULTI_VUS buyers (default 500) on a second sale of
// MULTI_STOCK units (default 300) with a per-customer limit of 4. Each buyer orders 1-4
// units (by VU number), and keeps ordering like a shop's buyer would: after a 201 they order
// again while the limit leaves room, after INSUFFICIENT_STOCK they order the `available` it
// carries. Thresholds: exactly MULTI_STOCK units sell (counted from the 201s' `quantity`),
// no buyer is over the limit (a LIMIT_REACHED's `remaining` matches what the buyer counted),
// no error; the teardown audits both sales.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  audit, auditTeardown, BASE_URL, buy, createSale, envInt, jsonParams, purchaseCounters, runSku, saleAdminView, tags,
} from '../lib/common.js';
import { FLOOR, floor, floorBurst, handleSummary, withEndpoints } from '../lib/report.js';

export { floor, handleSummary };

const VUS = envInt('VUS', 1000);
const POLL_VUS = envInt('POLL_VUS', 500);
const STOCK = envInt('INITIAL_STOCK', 100);

const MULTI_VUS = envInt('MULTI_VUS', 500);
const MULTI_STOCK = envInt('MULTI_STOCK', 300);
const LIMIT = 4;

const outcomes = purchaseCounters();
const multiUnits = new Counter('multi_units_sold');
const multiOrders = new Counter('multi_orders');
const multiError = new Counter('multi_error');

export const options = {
  setupTimeout: '60s',
  // The floor: the buyers' burst against /health/live first (FLOOR=0 skips it).
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(VUS) } : {}, {
    pollers: { executor: 'constant-vus', vus: POLL_VUS, duration: '20s', exec: 'poll', startTime: FLOOR ? '5s' : '0s' },
    buyers: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, startTime: FLOOR ? '10s' : '5s', maxDuration: '60s', exec: 'buyer' },
    multi: { executor: 'per-vu-iterations', vus: MULTI_VUS, iterations: 1, startTime: FLOOR ? '10s' : '5s', maxDuration: '60s', exec: 'multiBuyer' },
  }),
  thresholds: withEndpoints({
    purchase_success: [`count==${Math.min(STOCK, VUS)}`],
    purchase_error: ['count==0'],
    purchase_duplicate: ['count==0'],
    multi_units_sold: [`count==${Math.min(MULTI_STOCK, MULTI_VUS * LIMIT)}`],
    multi_error: ['count==0'],
    checks: ['rate==1'],
    'http_req_failed': ['rate<0.001'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
    'http_req_duration{endpoint:sale_view}': ['p(95)<500', 'p(99)<1000'],
  }, ['purchase', 'multi_purchase', 'sale_view', 'floor', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('mixed-workload');
  createSale(sku, STOCK);
  const multiSku = `${sku}-multi`;
  createSale(multiSku, MULTI_STOCK, { perCustomerLimit: LIMIT, maxPerOrder: LIMIT });
  return { sku, multiSku, run: `${Date.now()}` };
}

export function buyer(data) {
  const userId = `mx-${data.run}-${__VU}`;
  buy(data.sku, userId, outcomes);
}

// One buyer of the multi-unit drop: orders until the limit is reached or the stock is gone.
export function multiBuyer(data) {
  const userId = `mu-${data.run}-${__VU}`;
  let owned = 0;
  let quantity = (__VU % LIMIT) + 1;
  for (let attempt = 0; attempt < 8 && quantity > 0; attempt++) {
    const res = http.post(
      `${BASE_URL}/api/v1/sales/${data.multiSku}/purchases`,
      JSON.stringify({ userId, quantity }),
      Object.assign(jsonParams('multi_purchase', userId), { responseCallback: http.expectedStatuses(201, 409, 429) }),
    );
    const code = res.status === 201 ? 'CREATED' : body(res, 'code');
    const ok = check(res, {
      'multi: 201 of the units asked, or a documented 409/429': () =>
        (res.status === 201 && body(res, 'quantity') === quantity && body(res, 'userId') === userId) ||
        ['SOLD_OUT', 'INSUFFICIENT_STOCK', 'LIMIT_REACHED', 'RATE_LIMITED'].includes(code),
      'multi: INSUFFICIENT_STOCK carries fewer units than asked': () =>
        code !== 'INSUFFICIENT_STOCK' || (body(res, 'available') > 0 && body(res, 'available') < quantity),
      "multi: LIMIT_REACHED's remaining is what the buyer has left": () =>
        code !== 'LIMIT_REACHED' || body(res, 'remaining') === LIMIT - owned,
    });
    if (!ok) multiError.add(1);
    if (code === 'CREATED') {
      owned += quantity;
      multiUnits.add(quantity);
      multiOrders.add(1);
      quantity = Math.min(quantity, LIMIT - owned);
    } else if (code === 'INSUFFICIENT_STOCK') {
      quantity = Math.min(body(res, 'available'), LIMIT - owned);
    } else if (code === 'RATE_LIMITED') {
      sleep(1);
    } else {
      break;
    }
  }
}

function body(res, field) {
  try {
    return res.json(field);
  } catch (_) {
    return null;
  }
}

export function poll(data) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.sku}`, { tags: tags('sale_view') });
  check(res, { 'sale view is 200': (r) => r.status === 200 });
  sleep(0.5);
}

export function teardown(data) {
  auditTeardown(data);
  const report = audit(data.multiSku);
  const view = saleAdminView(data.multiSku);
  console.log(`sale ${data.multiSku}: audit ${report && report.passed ? 'PASS' : 'FAIL'}, sold ${view && view.sold} of ${MULTI_STOCK}`);
  if (!report || !report.passed || !view || view.sold !== Math.min(MULTI_STOCK, MULTI_VUS * LIMIT)) {
    throw new Error(`multi-unit drop ${data.multiSku}: ${JSON.stringify({ report, view })}`);
  }
}
