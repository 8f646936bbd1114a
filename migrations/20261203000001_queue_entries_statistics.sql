-- A crowd fills queue_entries faster than the default autovacuum thresholds notice (10% of
-- the table): until the next ANALYZE the planner believes a new sale has next to no entries,
-- and the join batch's lookups by (sale_id, user_id = ANY) become a filter over every entry
-- of the sale (measured 50-70 ms per statement at 200,000 entries). Re-analyze after 1% of
-- the table (or 5,000 rows) has changed; an ANALYZE samples 30,000 rows, whatever the size.
ALTER TABLE queue_entries SET (autovacuum_analyze_scale_factor = 0.01,
                               autovacuum_analyze_threshold = 5000);
