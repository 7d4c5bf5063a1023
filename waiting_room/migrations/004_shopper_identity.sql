-- 003: who may take a place. A sale may require a signed-in shopper (the shop's JWT: one
-- place per subject), or price anonymous joins with a proof of work (difficulty in bits;
-- 0: none). The admitter may raise the difficulty live; this is the sale's base.
ALTER TABLE sales
    ADD COLUMN identity_required boolean NOT NULL DEFAULT false,
    ADD COLUMN pow_difficulty integer NOT NULL DEFAULT 0
        CHECK (pow_difficulty = 0 OR pow_difficulty BETWEEN 4 AND 26),
    ADD CONSTRAINT sales_identity_or_pow CHECK (NOT (identity_required AND pow_difficulty > 0));
