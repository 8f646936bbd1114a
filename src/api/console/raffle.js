// The flashsale console's raffle panel: for a raffle sale, where the draw stands (entries
// open, drawing, drawn, finished) and its entrants by status, from the admin view's `raffle`
// object, and the seed once the draw has begun. Read again (the counts are a count over the
// entries) at most every 2 s while raffle events arrive, and every 5 s until it finishes.
// Uses the helpers of console.js; sale.js calls the three functions below.
'use strict';

const RAFFLE_EVENT_GAP_MS = 2000;
const RAFFLE_IDLE_GAP_MS = 5000;

// When a sale opens: show the panel for a raffle (hide it otherwise) and fill it.
function showRaffle(detail, sale) {
  $('raffle-panel').hidden = sale.checkout !== 'raffle';
  if (sale.checkout !== 'raffle') return;
  detail.raffle = { stats: sale.raffle || null, readAt: Date.now(), dirty: false, busy: false };
  renderRaffle(detail);
}

// An event of the sale (from the admin stream): the counts move with raffle events and
// with a confirmed selection's purchase.
function noteRaffleEvent(detail, event) {
  if (!detail.raffle) return;
  if (event.type.startsWith('raffle.') || event.type === 'purchase.created') detail.raffle.dirty = true;
}

// Once a second (the detail's sampler): read the raffle again when due.
function tickRaffle(detail) {
  const raffle = detail.raffle;
  if (!raffle || raffle.busy) return;
  const since = Date.now() - raffle.readAt;
  const finished = raffle.stats && raffle.stats.finishedAt;
  if (!(raffle.dirty && since >= RAFFLE_EVENT_GAP_MS) && (finished || since < RAFFLE_IDLE_GAP_MS)) {
    renderRaffle(detail); // the state may change by the clock (entries close at endsAt)
    return;
  }
  raffle.busy = true;
  raffle.dirty = false;
  api('GET', `/api/v1/admin/sales/${encodeURIComponent(detail.id)}`)
    .then((sale) => {
      if (app.detail !== detail) return;
      raffle.stats = sale.raffle || null;
      renderRaffle(detail);
    })
    .catch(report)
    .finally(() => {
      raffle.readAt = Date.now();
      raffle.busy = false;
    });
}

// Where the draw stands, in words.
function raffleState(view, stats) {
  if (!stats) return '–';
  if (['cancelled', 'archived'].includes(view.state)) return view.state;
  if (stats.finishedAt) return 'finished';
  if (stats.drawnAt) return 'drawn';
  if (stats.drawStartedAt || Date.now() >= Date.parse(view.endsAt)) return 'drawing';
  if (Date.now() < Date.parse(view.startsAt)) return 'entries not open yet';
  return 'entries open';
}

function renderRaffle(detail) {
  const raffle = detail.raffle;
  if (!raffle) return;
  const s = raffle.stats;
  const panel = $('raffle-panel');
  const set = (field, text) => { panel.querySelector(`[data-raffle="${field}"]`).textContent = text; };
  set('state', raffleState(detail.view, s));
  if (!s) return;
  const entries = s.entered + s.selected + s.purchased + s.expired + s.notSelected + s.withdrawn;
  set('entrants', entries);
  set('entered', s.entered);
  set('selected', s.selected);
  set('purchased', s.purchased);
  set('expired', s.expired);
  set('not-selected', s.notSelected);
  set('withdrawn', s.withdrawn);
  set('seed', s.drawSeed ? `draw seed ${s.drawSeed};` : 'the seed is shown once the draw begins');
  set('ranked', s.entrants !== undefined ? `${s.entrants} entrants ranked` : '');
}
