-- 003: an Idempotency-Key is bound to the request it was first sent with. The fingerprint
-- (a digest of the request as parsed: shopper, sale, quantity, seats) is kept beside the key,
-- so a retry can be told from another request once Redis's record is gone. NULL: an order
-- made without a key, or before fingerprints were kept.
ALTER TABLE orders ADD COLUMN idempotency_fingerprint text;
