-- 001: sales, the definitions the waiting room and the operator act on.
CREATE TABLE sales (
    id                     text PRIMARY KEY
                           CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    stock                  integer NOT NULL CHECK (stock > 0),
    seat_map               jsonb,
    opens_at               timestamptz NOT NULL,
    closes_at              timestamptz NOT NULL,
    timezone               text NOT NULL DEFAULT 'UTC',
    per_shopper_limit      integer NOT NULL CHECK (per_shopper_limit BETWEEN 1 AND 100),
    hold_seconds           integer NOT NULL CHECK (hold_seconds BETWEEN 10 AND 3600),
    batch_size             integer NOT NULL CHECK (batch_size > 0),
    batch_interval_ms      integer NOT NULL CHECK (batch_interval_ms >= 50),
    max_active             integer NOT NULL CHECK (max_active >= batch_size),
    admission_ttl_seconds  integer NOT NULL CHECK (admission_ttl_seconds > 0),
    abandon_after_seconds  integer NOT NULL CHECK (abandon_after_seconds > 0),
    closed_at              timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sales_closes_after_opening CHECK (closes_at > opens_at)
);

CREATE INDEX sales_live ON sales (closes_at) WHERE closed_at IS NULL;
