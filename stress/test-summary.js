// The test of stress/lib/report.js that stress/test-summary.sh runs: no service, no network.
// Known values go into the metrics the scenarios use; the shell script then asserts that the
// printed summary and report.html show every threshold with its measured value, the summary
// table and readable durations. One threshold fails on purpose (journey_server_errors), so k6
// exits 99.
import { check } from 'k6';
import { Counter, Gauge, Trend } from 'k6/metrics';
import { booksVerdict, formatDuration, handleSummary, k6Duration } from './lib/report.js';

export { handleSummary };

const success = new Counter('journey_purchased');
const soldOut = new Counter('journey_sold_out');
const expired = new Counter('journey_hold_expired');
const errors = new Counter('journey_server_errors');
const attempts = new Counter('journey_attempts');
const buyers = new Counter('journey_buyers');
const joinToHold = new Trend('journey_join_to_hold', true);
const holdToConfirm = new Trend('journey_hold_to_confirm', true);
const journey = new Trend('journey_duration', true);
const selfTest = new Counter('selftest_failures');
const books = {
  confirmed: new Gauge('verify_confirmed_orders'), available: new Gauge('verify_available'),
  held: new Gauge('verify_held'), stock: new Gauge('verify_stock'), walked: new Gauge('verify_buyers_walked'),
};

export const options = {
  vus: 1,
  iterations: 1,
  thresholds: {
    journey_purchased: ['count==100'],
    journey_server_errors: ['count==0'],
    journey_hold_to_confirm: ['p(95)<1000'],
    journey_join_to_hold: ['p(50)<2000', 'p(99)<5000'],
    checks: ['rate==1'],
    selftest_failures: ['count==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

function expectEqual(what, got, want) {
  if (got !== want) {
    selfTest.add(1);
    console.error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}

export default function () {
  success.add(100);
  soldOut.add(900);
  expired.add(3);
  errors.add(2);
  attempts.add(1050);
  buyers.add(1000);
  for (let i = 0; i < 10; i++) {
    joinToHold.add(1520);
    holdToConfirm.add(104.98);
    journey.add(123000);
  }
  check(null, { 'always true': () => true });
  books.confirmed.add(100);
  books.available.add(0);
  books.held.add(0);
  books.stock.add(100);
  books.walked.add(1234);
  expectEqual('formatDuration(0.42)', formatDuration(0.42), '0.42 ms');
  expectEqual('formatDuration(523.4)', formatDuration(523.4), '523 ms');
  expectEqual('formatDuration(1520)', formatDuration(1520), '1.52 s');
  expectEqual('formatDuration(123000)', formatDuration(123000), '2 min 3 s');
  expectEqual('formatDuration(3900000)', formatDuration(3900000), '1 h 5 min');
  expectEqual('k6Duration(104.98)', k6Duration(104.98), '104.98ms');
  expectEqual('k6Duration(0.5)', k6Duration(0.5), '500.00µs');
  expectEqual('booksVerdict over', booksVerdict({ confirmed: 101, available: 0, held: 0, stock: 100 }), 'OVERBOOKING DETECTED');
  expectEqual('booksVerdict over, remaining', booksVerdict({ confirmed: 99, available: 2, held: 0, stock: 100 }), 'OVERBOOKING DETECTED');
  expectEqual('booksVerdict under', booksVerdict({ confirmed: 98, available: 1, held: 0, stock: 100 }), 'UNDERSELLING DETECTED');
  expectEqual('booksVerdict pass', booksVerdict({ confirmed: 90, available: 5, held: 5, stock: 100 }), 'PASS');
}
