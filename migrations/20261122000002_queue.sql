-- Queued checkout: a per-sale waiting room. Buyers take a ticket, are admitted in ticket order
-- to a hold on one unit that expires, and confirm the hold to buy.

ALTER TABLE sales
    -- How many buyers may wait at once; a join past it is refused with QUEUE_FULL.
    ADD COLUMN queue_capacity integer NOT NULL DEFAULT 100000
        CHECK (queue_capacity BETWEEN 1 AND 10000000),
    -- How many holds may be live at once (0 = as many as there is stock): the admission rate.
    ADD COLUMN max_active_holds integer NOT NULL DEFAULT 0
        CHECK (max_active_holds BETWEEN 0 AND 10000000);

-- One row per queued sale: the ticket counter and the admission mark. A position is
-- `ticket - admitted_upto - 1`, read in O(1); it never counts over the queue.
CREATE TABLE sale_queues (
    sale_id        uuid        PRIMARY KEY REFERENCES sales (id) ON DELETE CASCADE,
    -- The last ticket handed out.
    last_ticket    bigint      NOT NULL DEFAULT 0,
    -- The highest ticket admitted so far; only grows, so positions only shrink.
    admitted_upto  bigint      NOT NULL DEFAULT 0,
    -- Buyers waiting now (status 'queued'); the audit checks it against the entries.
    waiting        integer     NOT NULL DEFAULT 0 CHECK (waiting >= 0),
    -- Holds granted and holds that ran out, in all.
    admitted       integer     NOT NULL DEFAULT 0,
    expired        integer     NOT NULL DEFAULT 0,
    first_admitted_at timestamptz,
    -- The pre-queue shuffle: drawn when the sale is created, applied once at the opening.
    shuffle_seed   bigint      NOT NULL,
    shuffled_at    timestamptz,
    prequeue_size  integer
) WITH (fillfactor = 50);

CREATE TABLE queue_entries (
    sale_id          uuid        NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    user_id          text        NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 128),
    ticket           bigint      NOT NULL,
    -- Joined before the opening: the order is drawn by the shuffle, not by arrival.
    prequeue         boolean     NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('queued', 'held', 'purchased', 'expired', 'left')),
    joined_at        timestamptz NOT NULL DEFAULT now(),
    admitted_at      timestamptz,
    hold_expires_at  timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (sale_id, user_id),
    CONSTRAINT queue_entries_hold_has_expiry CHECK (status <> 'held' OR hold_expires_at IS NOT NULL)
);
-- The admission worker reads the head of a queue; the expiry worker the oldest holds.
CREATE INDEX queue_entries_waiting ON queue_entries (sale_id, ticket) WHERE status = 'queued';
CREATE INDEX queue_entries_holds ON queue_entries (sale_id, hold_expires_at) WHERE status = 'held';
CREATE INDEX queue_entries_user ON queue_entries (user_id);

-- At most one pending queue tick per sale: waking the admission worker again while a tick is
-- already due only moves that tick earlier (see enqueue_queue_tick).
CREATE UNIQUE INDEX jobs_one_pending_queue_tick ON jobs (sale_id)
    WHERE kind = 'queue_tick' AND lock_token IS NULL AND dead_at IS NULL;
