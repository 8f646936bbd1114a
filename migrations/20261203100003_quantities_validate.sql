-- Quantities, step 3 of 3: the checks added NOT VALID in step 1 are validated (every row
-- written before has the defaults). VALIDATE takes a lock that lets purchases and joins go
-- on, in a transaction of its own, apart from step 2's locks.
ALTER TABLE purchases VALIDATE CONSTRAINT purchases_quantity;
ALTER TABLE purchases VALIDATE CONSTRAINT purchases_units_before;
ALTER TABLE queue_entries VALIDATE CONSTRAINT queue_entries_quantity;
