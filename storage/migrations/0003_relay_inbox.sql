-- The bus relay (outbox -> NATS JetStream) and the inbox (JetStream -> this service).
--  * ix_outbox_relay: the relay reads the oldest sequenced, unpublished rows in seq order,
--    and the relay-lag metric reads the first of them; both stay cheap however large the
--    published part of the outbox grows.
--  * inbox.id holds the message's Nats-Msg-Id (any string a publisher chose, up to 256
--    characters) or "<stream>:<stream sequence>", no longer a ULID.
--  * inbox.outcome / last_error: a malformed message is recorded with its error (and so
--    is never applied, even when redelivered); stream_seq says where it came from.

CREATE INDEX ix_outbox_relay ON outbox (seq) WHERE published_at IS NULL AND seq IS NOT NULL;

ALTER TABLE inbox
    ALTER COLUMN id TYPE VARCHAR(256),
    ADD COLUMN stream_seq  BIGINT,
    ADD COLUMN outcome     VARCHAR(20) NOT NULL DEFAULT 'applied',
    ADD COLUMN last_error  TEXT,
    ADD CONSTRAINT ck_inbox_outcome CHECK (outcome IN ('applied', 'malformed')),
    ADD CONSTRAINT ck_inbox_last_error CHECK (length(last_error) <= 1000);
