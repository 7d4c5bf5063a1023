-- 005: a confirmed order being cancelled. The cancellation is recorded here first
-- (`cancelling`: the units are still sold, the refund is under way), then the refund is asked
-- for, then the units return and the order ends `cancelled`. Whatever stops it half-way (the
-- process killed, PostgreSQL or the provider down) leaves a row that says what is left to do,
-- and the persister's sweep finishes it: never a refund the record does not know of.
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('held', 'confirmed', 'cancelling', 'released', 'failed', 'cancelled'));
CREATE INDEX orders_cancelling ON orders (sale_id, updated_at) WHERE status = 'cancelling';
