-- 002: orders, the system of record and the final guard against overselling.
-- Every rule that must hold even when Redis loses writes is a constraint here.

ALTER TABLE sales ADD COLUMN price_cents integer NOT NULL DEFAULT 0 CHECK (price_cents >= 0);
ALTER TABLE sales ADD COLUMN currency text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$');

-- held + sold never exceed stock: a hold that would break it is refused by the database.
CREATE TABLE sale_inventory (
    sale_id  text PRIMARY KEY REFERENCES sales (id) ON DELETE CASCADE,
    stock    integer NOT NULL CHECK (stock > 0),
    held     integer NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold     integer NOT NULL DEFAULT 0 CHECK (sold >= 0),
    CONSTRAINT inventory_never_oversold CHECK (held + sold <= stock)
);

INSERT INTO sale_inventory (sale_id, stock) SELECT id, stock FROM sales
ON CONFLICT DO NOTHING;

CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    sale_id          text NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    visitor          text NOT NULL,
    queue_index      bigint,
    idempotency_key  text,
    quantity         integer NOT NULL CHECK (quantity > 0),
    status           text NOT NULL
                     CHECK (status IN ('held', 'confirmed', 'released', 'failed', 'cancelled')),
    reason           text,
    amount_cents     bigint NOT NULL DEFAULT 0,
    currency         text NOT NULL DEFAULT 'USD',
    payment_ref      text,
    hold_expires_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- an idempotency key is used once per shopper and sale
    CONSTRAINT orders_idempotency_once UNIQUE (sale_id, visitor, idempotency_key)
);
CREATE INDEX orders_by_visitor ON orders (sale_id, visitor, created_at);
CREATE INDEX orders_open_holds ON orders (sale_id) WHERE status = 'held';

-- a seat belongs to at most one held or confirmed order
CREATE TABLE order_seats (
    order_id  uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    sale_id   text NOT NULL,
    seat      integer NOT NULL CHECK (seat >= 0),
    label     text NOT NULL,
    active    boolean NOT NULL DEFAULT true,
    PRIMARY KEY (order_id, seat)
);
CREATE UNIQUE INDEX order_seats_sold_once ON order_seats (sale_id, seat) WHERE active;

-- the per-shopper limit counts held and confirmed units
CREATE TABLE shopper_totals (
    sale_id      text NOT NULL REFERENCES sales (id) ON DELETE CASCADE,
    visitor      text NOT NULL,
    units        integer NOT NULL DEFAULT 0 CHECK (units >= 0),
    limit_units  integer NOT NULL,
    PRIMARY KEY (sale_id, visitor),
    CONSTRAINT shopper_within_limit CHECK (units <= limit_units)
);

CREATE TABLE order_events (
    id         bigserial PRIMARY KEY,
    order_id   uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status     text NOT NULL,
    reason     text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_by_order ON order_events (order_id, id);

-- what the finalizer or an admin keeps of a sale after its Redis state is removed
CREATE TABLE sale_archive (
    sale_id     text PRIMARY KEY,
    figures     jsonb NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
