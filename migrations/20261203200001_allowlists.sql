-- Presales and allow-lists (issue 21, item 3): a sale created with `allowlist = true` sells
-- (and lets join its queue) only the buyers on its list.
--
-- Rollouts (the README's expand/contract rules): a new column with a constant default (no
-- rewrite), a new table, and the events' type CHECK widened by a new constraint added
-- NOT VALID (no scan under the lock; every row the previous release writes satisfies it).
-- The previous release knows nothing of the flag: it would sell an allow-listed sale to
-- anyone, so create sales with `allowlist` once every instance runs this release.
SET LOCAL lock_timeout = '5s';

-- Set at creation, never changed afterwards: statements may read it from their snapshot.
ALTER TABLE sales ADD COLUMN allowlist boolean NOT NULL DEFAULT false;

-- The buyers of an allow-listed sale. A purchase or a join locks its buyer's row FOR KEY
-- SHARE in the statement that sells or joins (store/purchases.rs, store/allowlist.rs), so a
-- removal waits for a sale in flight, and a sale after a committed removal finds no row.
-- `upload_id` is the upload that last listed the buyer: a replacing upload (PUT) marks the
-- rows it lists and then deletes the sale's other rows, so a buyer on both lists is never
-- off the list for a moment (an UPDATE of a non-key column takes FOR NO KEY UPDATE, which a
-- purchase's FOR KEY SHARE does not wait for).
CREATE TABLE sale_allowlist (
    sale_id   uuid NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    user_id   text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 128),
    upload_id uuid NOT NULL,
    PRIMARY KEY (sale_id, user_id)
);

-- sale.allowlist_changed: one event per change of a list (an upload or a removal).
ALTER TABLE events DROP CONSTRAINT events_type_check,
    ADD CONSTRAINT events_type_check CHECK (type IN (
        'purchase.created', 'hold.granted', 'hold.expired', 'hold.released',
        'sale.started', 'sale.sold_out', 'sale.ended', 'sale.cancelled',
        'sale.archived', 'sale.allowlist_changed')) NOT VALID;
