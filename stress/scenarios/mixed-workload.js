// mixed-workload: VUS buyers (default 1,000) each fire one purchase at once against
// INITIAL_STOCK units, while POLL_VUS readers (default 500) poll the sale view. Same
// correctness thresholds as purchase-load: exactly the stock sells, no error, no false
// duplicate, every answer checked (checks at 100%).
//
// Beside it, a multi-unit variant drop: MULTI_VUS buyers (default 500) on a second sale of
// MULTI_STOCK units (default 300) in four sizes of uneven stock (S, M, L, XL: 10 %, 20 %,
// 30 % and the rest), with a per-customer limit of 4 that counts across sizes. Each buyer
// picks a size (by VU number: the scarce sizes are the popular ones) and orders 1-4 units of
// it, and keeps ordering like a shop's buyer would: after a 201 they order again while the
// limit leaves room, after INSUFFICIENT_STOCK they order the `available` it carries, after a
// SOLD_OUT for their size they read the sale's view a second later and switch to a size it
// does not show sold out (the view may be cached, so they also skip every size that
// answered them SOLD_OUT). A buyer at the limit asks once more, for one unit of another
// size: LIMIT_REACHED with nothing left. Thresholds: per size, the units counted from the 201s'
// `quantity` equal the size's stock, and in all MULTI_STOCK; buyers did switch sizes; every
// answer is a 201 of the size and units asked or a documented 409/429 (no 5xx, no 400); a
// LIMIT_REACHED's `remaining` matches what the buyer counted across sizes. The teardown
// audits both sales (variants_balance_and_sum_to_the_sale included) and reads each size's
// counters; the runner checks both sales' invariants in Postgres.
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
// Seconds a buyer told SOLD_OUT takes to pick another size (a person reads the page again),
// which also keeps the switchers' orders off the plain burst's first second.
const SWITCH_PAUSE = 1;

// The drop's sizes: uneven stocks (10 %, 20 %, 30 %, the rest; each at least 1) summing to
// MULTI_STOCK, so the small sizes sell out first and their buyers move on.
const VARIANTS = (() => {
  const codes = ['S', 'M', 'L', 'XL'];
  const sizes = [0.1, 0.2, 0.3].map((share) => Math.max(1, Math.floor(MULTI_STOCK * share)));
  sizes.push(MULTI_STOCK - sizes.reduce((a, b) => a + b, 0));
  if (sizes[3] < 1) throw new Error(`MULTI_STOCK=${MULTI_STOCK}: four sizes need at least 4 units`);
  return codes.map((code, i) => ({ code, stock: sizes[i] }));
})();
// The size a buyer wants first, by VU number: the scarce sizes are the popular ones (S 50 %,
// M 30 %, L 15 %, XL 5 % of the buyers), as in a real drop.
const FIRST_CHOICE = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3];
// Buyers who all reach the limit want MULTI_VUS x LIMIT units: with at least the stock, every
// size sells out; with fewer, only the total is known (they all reach the limit).
const SELLS_OUT = MULTI_VUS * LIMIT >= MULTI_STOCK;
// Switches are certain when S's first choosers want more than S has (one of them hears
// SOLD_OUT) and XL's want less than XL has: XL then sells out only to someone who switched,
// and until it does, everyone told SOLD_OUT switches to it at least. So at CI's size and the
// default, the drop must see switches.
const SWITCHES = Math.floor(MULTI_VUS / FIRST_CHOICE.length) * 10 * LIMIT > VARIANTS[0].stock &&
  Math.ceil(MULTI_VUS / FIRST_CHOICE.length) * LIMIT < VARIANTS[3].stock;

const outcomes = purchaseCounters();
const multiUnits = new Counter('multi_units_sold');
const multiOrders = new Counter('multi_orders');
const multiSwitches = new Counter('multi_variant_switches');
const multiLimitProbes = new Counter('multi_limit_probes');
const multiError = new Counter('multi_error');

const perVariant = {};
if (SELLS_OUT) {
  for (const v of VARIANTS) perVariant[`multi_units_sold{variant:${v.code}}`] = [`count==${v.stock}`];
}
if (SWITCHES) perVariant.multi_variant_switches = ['count>0'];

export const options = {
  setupTimeout: '60s',
  // The floor: the buyers' burst against /health/live first (FLOOR=0 skips it).
  scenarios: Object.assign(FLOOR ? { floor: floorBurst(VUS) } : {}, {
    pollers: { executor: 'constant-vus', vus: POLL_VUS, duration: '20s', exec: 'poll', startTime: FLOOR ? '5s' : '0s' },
    buyers: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, startTime: FLOOR ? '10s' : '5s', maxDuration: '60s', exec: 'buyer' },
    multi: { executor: 'per-vu-iterations', vus: MULTI_VUS, iterations: 1, startTime: FLOOR ? '10s' : '5s', maxDuration: '60s', exec: 'multiBuyer' },
  }),
  thresholds: withEndpoints(Object.assign({
    purchase_success: [`count==${Math.min(STOCK, VUS)}`],
    purchase_error: ['count==0'],
    purchase_duplicate: ['count==0'],
    multi_units_sold: [`count==${Math.min(MULTI_STOCK, MULTI_VUS * LIMIT)}`],
    multi_error: ['count==0'],
    checks: ['rate==1'],
    'http_req_failed': ['rate<0.001'],
    // The variant drop: every answer a 201 or a documented 409/429 (no 5xx, no 4xx besides).
    'http_req_failed{endpoint:multi_purchase}': ['rate==0'],
    'http_req_failed{endpoint:multi_sale_view}': ['rate==0'],
    'http_req_duration{endpoint:purchase}': ['p(50)<500', 'p(95)<1000', 'p(99)<2000'],
    'http_req_duration{endpoint:sale_view}': ['p(95)<500', 'p(99)<1000'],
  }, perVariant), ['purchase', 'multi_purchase', 'multi_sale_view', 'sale_view', 'floor', 'admin_audit']),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  const sku = runSku('mixed-workload');
  createSale(sku, STOCK);
  // The runner's invariant check finds this sale by its sku: keep `${sku}-multi`.
  const multiSku = `${sku}-multi`;
  createSale(multiSku, undefined, {
    variants: VARIANTS, perCustomerLimit: LIMIT, maxPerOrder: LIMIT,
  });
  return { sku, multiSku, run: `${Date.now()}` };
}

export function buyer(data) {
  const userId = `mx-${data.run}-${__VU}`;
  buy(data.sku, userId, outcomes);
}

// One buyer of the variant drop: orders until the limit is reached or every size is gone,
// then (at the limit) checks that one more unit of another size is refused.
export function multiBuyer(data) {
  const userId = `mu-${data.run}-${__VU}`;
  const gone = new Set(); // sizes that answered this buyer SOLD_OUT, or the view shows sold out
  let owned = 0;
  let variant = VARIANTS[FIRST_CHOICE[__VU % FIRST_CHOICE.length]].code;
  let quantity = (__VU % LIMIT) + 1;
  for (let attempt = 0; attempt < 24 && quantity > 0 && variant; attempt++) {
    const { res, code } = multiOrder(data, userId, variant, quantity, owned);
    if (code === 'CREATED') {
      owned += quantity;
      multiUnits.add(quantity, { variant });
      multiOrders.add(1);
      quantity = Math.min(quantity, LIMIT - owned);
    } else if (code === 'INSUFFICIENT_STOCK') {
      quantity = Math.min(body(res, 'available'), LIMIT - owned);
    } else if (code === 'SOLD_OUT') {
      gone.add(variant);
      sleep(SWITCH_PAUSE); // a buyer looks at the sizes again before picking another
      variant = nextVariant(data, gone);
      if (variant) multiSwitches.add(1);
    } else if (code === 'RATE_LIMITED') {
      sleep(1);
    } else {
      break;
    }
  }
  if (owned !== LIMIT) return;
  // The limit counts across sizes: one more unit, of a size other than the last one bought.
  const other = VARIANTS[(VARIANTS.findIndex((v) => v.code === variant) + 1) % VARIANTS.length].code;
  for (let attempt = 0; attempt < 8; attempt++) {
    const { code } = multiOrder(data, userId, other, 1, owned);
    if (code !== 'RATE_LIMITED') {
      multiLimitProbes.add(1);
      if (code !== 'LIMIT_REACHED') multiError.add(1);
      check(code, { 'multi: at the limit, another size is LIMIT_REACHED': (c) => c === 'LIMIT_REACHED' });
      return;
    }
    sleep(1);
  }
}

// One order of the variant drop, checked: the answer and what it carries.
function multiOrder(data, userId, variant, quantity, owned) {
  const res = http.post(
    `${BASE_URL}/api/v1/sales/${data.multiSku}/purchases`,
    JSON.stringify({ userId, variant, quantity }),
    Object.assign(jsonParams('multi_purchase', userId), { responseCallback: http.expectedStatuses(201, 409, 429) }),
  );
  const code = res.status === 201 ? 'CREATED' : body(res, 'code');
  const ok = check(res, {
    'multi: 201 of the size and units asked, or a documented 409/429': () =>
      (res.status === 201 && body(res, 'quantity') === quantity && body(res, 'variant') === variant &&
        body(res, 'userId') === userId) ||
      (res.status === 409 && ['SOLD_OUT', 'INSUFFICIENT_STOCK', 'LIMIT_REACHED'].includes(code)) ||
      (res.status === 429 && code === 'RATE_LIMITED'),
    "multi: INSUFFICIENT_STOCK carries fewer of the size's units than asked": () =>
      code !== 'INSUFFICIENT_STOCK' || (body(res, 'available') > 0 && body(res, 'available') < quantity),
    "multi: LIMIT_REACHED's remaining is what the buyer has left across sizes": () =>
      code !== 'LIMIT_REACHED' || body(res, 'remaining') === LIMIT - owned,
  });
  if (!ok) multiError.add(1);
  return { res, code };
}

// The size to try after a SOLD_OUT: one the public view does not show sold out and that has
// not answered this buyer SOLD_OUT (the view may be a cached, older one: it can show a size
// as available after it sold out, never the other way round). Spread by VU number; none:
// everything is gone.
function nextVariant(data, gone) {
  const res = http.get(`${BASE_URL}/api/v1/sales/${data.multiSku}`, { tags: tags('multi_sale_view') });
  const shown = res.status === 200 ? body(res, 'variants') : null;
  const ok = check(shown, {
    "multi: the view shows each size's stock, balanced": (variants) =>
      Array.isArray(variants) && variants.length === VARIANTS.length &&
      variants.every((v, i) => v.code === VARIANTS[i].code && v.stock === VARIANTS[i].stock &&
        v.sold + v.held + v.available === v.stock && v.soldOut === (v.available === 0)),
  });
  if (!ok) multiError.add(1);
  if (ok) for (const v of shown) if (v.soldOut) gone.add(v.code);
  const left = VARIANTS.filter((v) => !gone.has(v.code));
  return left.length ? left[__VU % left.length].code : null;
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
  const sizes = ((view && view.variants) || []).map((v) => `${v.code} ${v.sold}/${v.stock}`).join(', ');
  // The audit must have checked the sizes, not only the sale.
  const variantCheck = ((report && report.checks) || []).find((c) => c.name === 'variants_balance_and_sum_to_the_sale');
  const checked = variantCheck ? `${variantCheck.passed ? 'PASS' : 'FAIL'} ${variantCheck.detail}` : 'missing';
  console.log(`sale ${data.multiSku}: audit ${report && report.passed ? 'PASS' : 'FAIL'}, ` +
    `sold ${view && view.sold} of ${MULTI_STOCK} (${sizes}); variants_balance_and_sum_to_the_sale: ${checked}`);
  // Every size sold its whole stock (when the buyers wanted at least the stock).
  const soldOut = !SELLS_OUT || (view && Array.isArray(view.variants) && view.variants.length === VARIANTS.length &&
    view.variants.every((v, i) => v.code === VARIANTS[i].code && v.sold === VARIANTS[i].stock && v.available === 0));
  const sold = view && view.sold === Math.min(MULTI_STOCK, MULTI_VUS * LIMIT);
  if (!report || !report.passed || !variantCheck || !sold || !soldOut) {
    throw new Error(`multi-unit variant drop ${data.multiSku}: ${JSON.stringify({ report, view })}`);
  }
}
