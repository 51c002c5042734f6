-- The seed data model, with the specification's corrections:
--  * platform_configs: node_id for NODE scope, scope/identity CHECK, a NULLS NOT DISTINCT
--    unique key instead of the invalid expression primary key, version for etags;
--  * config_history records node_id and the kind of change;
--  * feature_flags carry a version;
--  * outbox rows get seq (assigned after commit by the sequencer) and next_attempt_at;
--  * every retention job has an index that leads with its time column.

CREATE TABLE platform_configs (
    key          VARCHAR(100) NOT NULL,
    scope        VARCHAR(20)  NOT NULL DEFAULT 'PLATFORM'
                 CHECK (scope IN ('PLATFORM', 'TENANT', 'NODE')),
    tenant_id    CHAR(26),
    node_id      VARCHAR(100),
    value        TEXT         NOT NULL,
    description  TEXT,
    is_archived  BOOLEAN      NOT NULL DEFAULT FALSE,
    version      BIGINT       NOT NULL DEFAULT 1,
    updated_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT uq_platform_configs_identity UNIQUE NULLS NOT DISTINCT (key, scope, tenant_id, node_id),
    CONSTRAINT ck_platform_configs_scope_identity CHECK (
        (scope = 'PLATFORM' AND tenant_id IS NULL AND node_id IS NULL)
        OR (scope = 'TENANT' AND tenant_id IS NOT NULL AND node_id IS NULL)
        OR (scope = 'NODE' AND node_id IS NOT NULL AND tenant_id IS NULL)
    )
);
CREATE INDEX ix_pconfig_scope ON platform_configs (scope, tenant_id, node_id);

CREATE TABLE config_history (
    id          CHAR(26)     PRIMARY KEY,
    config_key  VARCHAR(100) NOT NULL,
    scope       VARCHAR(20)  NOT NULL,
    tenant_id   CHAR(26),
    node_id     VARCHAR(100),
    action      VARCHAR(20)  NOT NULL CHECK (action IN ('SET', 'ARCHIVE', 'UNARCHIVE')),
    old_value   TEXT,
    new_value   TEXT         NOT NULL,
    changed_by  CHAR(26),
    changed_at  TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX ix_chist_row_time ON config_history (config_key, scope, tenant_id, node_id, changed_at DESC, id DESC);
CREATE INDEX ix_chist_changed_at ON config_history (changed_at);

CREATE TABLE feature_flags (
    key                  VARCHAR(100) PRIMARY KEY,
    description          TEXT,
    default_enabled      BOOLEAN      NOT NULL DEFAULT FALSE,
    enabled_tenant_ids   TEXT[]       NOT NULL DEFAULT '{}',
    disabled_tenant_ids  TEXT[]       NOT NULL DEFAULT '{}',
    is_archived          BOOLEAN      NOT NULL DEFAULT FALSE,
    version              BIGINT       NOT NULL DEFAULT 1,
    created_at           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT ck_feature_flags_key CHECK (key ~ '^[a-z][a-z0-9_.-]{0,99}$'),
    CONSTRAINT ck_feature_flags_lists_disjoint CHECK (NOT (enabled_tenant_ids && disabled_tenant_ids))
);
CREATE INDEX ix_flags_archived ON feature_flags (is_archived);

CREATE TABLE health_sources (
    id                     CHAR(26)     PRIMARY KEY,
    service_id             VARCHAR(100) NOT NULL UNIQUE,
    health_url             TEXT         NOT NULL,
    last_heartbeat_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    staleness_threshold_s  INT          NOT NULL DEFAULT 60
);

CREATE TABLE health_check_results (
    id          CHAR(26)    PRIMARY KEY,
    source_id   CHAR(26)    NOT NULL REFERENCES health_sources (id) ON DELETE CASCADE,
    status      VARCHAR(20) NOT NULL CHECK (status IN ('healthy', 'unhealthy', 'degraded')),
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    details     JSONB
);
CREATE INDEX ix_hcr_source_time ON health_check_results (source_id, checked_at DESC);
CREATE INDEX ix_hcr_checked_at ON health_check_results (checked_at);

-- Outbox ids and created_at are fixed at insert; seq is assigned after commit by a single
-- sequencer at a time, so tailing by seq never skips a row that committed late.
CREATE SEQUENCE outbox_seq AS BIGINT CACHE 1;

CREATE TABLE outbox (
    id               CHAR(26)     PRIMARY KEY,
    tenant_id        CHAR(26),
    subject          VARCHAR(200) NOT NULL,
    payload          JSONB        NOT NULL,
    headers          JSONB        NOT NULL,
    -- clock_timestamp, not now(): a row inserted after waiting for a row lock sorts after
    -- the row of the transaction it waited for.
    created_at       TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp(),
    seq              BIGINT       UNIQUE,
    sequenced_at     TIMESTAMPTZ,
    published_at     TIMESTAMPTZ,
    attempt          INT          NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_error       TEXT
);
CREATE INDEX ix_outbox_unsequenced ON outbox (created_at, id) WHERE seq IS NULL;
CREATE INDEX ix_outbox_unpublished ON outbox (next_attempt_at) WHERE published_at IS NULL;
CREATE INDEX ix_outbox_created_at ON outbox (created_at);

CREATE TABLE inbox (
    id            CHAR(26)     PRIMARY KEY,
    subject       VARCHAR(200) NOT NULL,
    received_at   TIMESTAMPTZ  NOT NULL DEFAULT now(),
    processed_at  TIMESTAMPTZ
);
CREATE INDEX ix_inbox_received_at ON inbox (received_at);

-- One row: this database's identity (cursors from another database are refused) and the
-- highest seq that retention has pruned (cursors below it have expired).
CREATE TABLE stream_state (
    singleton    BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    database_id  UUID        NOT NULL DEFAULT gen_random_uuid(),
    pruned_seq   BIGINT      NOT NULL DEFAULT 0,
    pruned_at    TIMESTAMPTZ
);
INSERT INTO stream_state DEFAULT VALUES;

-- The allow-listed keys, seeded at PLATFORM scope with the defaults of domain/config_keys.py
-- (a test keeps the two equal).
INSERT INTO platform_configs (key, scope, value, description) VALUES
    ('global.session_max_absolute_minutes', 'PLATFORM', '720',  'Longest a session may last, in minutes, however active it is.'),
    ('global.session_idle_minutes',         'PLATFORM', '30',   'Minutes of inactivity after which a session ends.'),
    ('global.mfa_required_default',         'PLATFORM', 'false', 'Whether new users must enrol a second factor.'),
    ('global.password_min_length',          'PLATFORM', '12',   'Minimum password length in characters.'),
    ('global.password_require_symbols',     'PLATFORM', 'true', 'Whether passwords must contain a non-alphanumeric character.'),
    ('global.max_failed_login_attempts',    'PLATFORM', '5',    'Failed logins before an account is locked.'),
    ('email.smtp_host',                     'PLATFORM', '"localhost"', 'SMTP relay host name; a node may use a local relay.'),
    ('email.smtp_port',                     'PLATFORM', '587',  'SMTP relay port.'),
    ('email.from_address',                  'PLATFORM', '"no-reply@example.com"', 'Sender address of platform e-mail.');
