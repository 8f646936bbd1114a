-- flashsale schema: sales with their stock counters, purchases, the state-change log and the
-- background job queue. Every invariant that can be a constraint is one, so that a bug in the
-- service turns into an error instead of an oversold sale.

CREATE TABLE sales (
    id            uuid        PRIMARY KEY,
    sku           text        NOT NULL UNIQUE CHECK (char_length(sku) BETWEEN 1 AND 64),
    name          text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    stock         integer     NOT NULL CHECK (stock BETWEEN 1 AND 10000000),
    -- The three counters always add up to the stock; every statement that moves a unit moves
    -- it between two of them in one UPDATE, so the CHECK below holds at every commit.
    available     integer     NOT NULL CHECK (available >= 0),
    held          integer     NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold          integer     NOT NULL DEFAULT 0 CHECK (sold >= 0),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    checkout      text        NOT NULL CHECK (checkout IN ('instant', 'queued')),
    hold_seconds  integer     NOT NULL CHECK (hold_seconds BETWEEN 1 AND 86400),
    cancelled_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sales_counters_balance CHECK (sold + held + available = stock),
    CONSTRAINT sales_window_ordered CHECK (ends_at > starts_at)
) WITH (fillfactor = 50);
-- fillfactor leaves room on the page so the hot counter updates stay HOT (no index churn).

CREATE TABLE purchases (
    id          uuid        PRIMARY KEY,
    sale_id     uuid        NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    user_id     text        NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- One purchase per user per sale. The purchase statement relies on this index to abort
    -- (and so undo its stock decrement) when a user buys twice.
    CONSTRAINT purchases_one_per_user UNIQUE (sale_id, user_id)
);
CREATE INDEX purchases_user ON purchases (user_id);

-- Sale state changes as the workers observed them. The public state is always derived from
-- the clock and the counters; this log records when each change happened and why a sale ended.
CREATE TABLE sale_events (
    id           bigserial   PRIMARY KEY,
    sale_id      uuid        NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    state        text        NOT NULL CHECK (state IN ('active', 'ended')),
    reason       text        CHECK (reason IN ('sold_out', 'time', 'cancelled')),
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sale_events_once UNIQUE (sale_id, state),
    CONSTRAINT sale_events_reason CHECK ((state = 'ended') = (reason IS NOT NULL))
);

-- The job queue. A job is claimed by setting a lease (locked_until, lock_token) in a short
-- transaction that commits at once; the job runs outside it. A lease that runs out (the
-- instance died) makes the job claimable again; the token keeps a late finisher from
-- completing a job someone else now owns.
CREATE TABLE jobs (
    id            bigserial   PRIMARY KEY,
    kind          text        NOT NULL,
    sale_id       uuid        REFERENCES sales (id) ON DELETE CASCADE,
    run_at        timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    locked_until  timestamptz,
    lock_token    uuid,
    last_error    text,
    dead_at       timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Only the shape the runner polls: live jobs by due time.
CREATE INDEX jobs_due ON jobs (run_at) WHERE dead_at IS NULL;
CREATE INDEX jobs_sale ON jobs (sale_id);

-- Wake the runners as soon as a job is queued; they still poll in case a notification is lost.
-- FOR EACH ROW, not STATEMENT: a statement trigger would fire on every purchase, whose CTE
-- inserts a job only for the unit that sells out.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('flashsale_jobs', '');
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_notify();
