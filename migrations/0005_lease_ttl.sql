-- The writer lease records the ttl its holder renews it within (`Journal::acquire_lease`), so
-- another process judges a lapse by the holder's own promise, not by its own default (a holder
-- with a longer ttl was taken to be dead between renewals). NULL: a lease written before this
-- column (judged by the reader's ttl, as before).
ALTER TABLE writer_lease ADD COLUMN ttl_ms INTEGER;
