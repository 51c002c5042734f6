-- HealthService: what the seed's health_sources lacks for probing, flap damping and etags.
--  * check_interval_s / next_check_at: the prober claims due rows (next_check_at <= now())
--    with FOR UPDATE SKIP LOCKED and moves next_check_at one interval ahead, so with several
--    replicas each source is checked once per interval;
--  * failure_threshold / success_threshold and the two consecutive counters: flap damping;
--  * status / status_since: the damped status and since when it holds (NULL: not decided yet);
--  * last_check_at / last_details: the latest raw result, so GetPlatformHealth reads only
--    this table and never scans the result history;
--  * version (etag), created_at, updated_at for the registration fields.
-- The seed's bounds and formats become CHECKs; domain/health.py validates first.

ALTER TABLE health_sources
    ADD COLUMN check_interval_s       INT          NOT NULL DEFAULT 30,
    ADD COLUMN failure_threshold      INT          NOT NULL DEFAULT 2,
    ADD COLUMN success_threshold      INT          NOT NULL DEFAULT 1,
    ADD COLUMN next_check_at          TIMESTAMPTZ  NOT NULL DEFAULT now(),
    ADD COLUMN status                 VARCHAR(20),
    ADD COLUMN status_since           TIMESTAMPTZ  NOT NULL DEFAULT now(),
    ADD COLUMN consecutive_failures   INT          NOT NULL DEFAULT 0,
    ADD COLUMN consecutive_successes  INT          NOT NULL DEFAULT 0,
    ADD COLUMN last_check_at          TIMESTAMPTZ,
    ADD COLUMN last_details           JSONB,
    ADD COLUMN version                BIGINT       NOT NULL DEFAULT 1,
    ADD COLUMN created_at             TIMESTAMPTZ  NOT NULL DEFAULT now(),
    ADD COLUMN updated_at             TIMESTAMPTZ  NOT NULL DEFAULT now(),
    ADD CONSTRAINT ck_health_sources_service_id CHECK (service_id ~ '^[a-z][a-z0-9-]{0,99}$'),
    ADD CONSTRAINT ck_health_sources_url CHECK (
        health_url ~ '^(https?|grpc)://' AND length(health_url) <= 2048),
    ADD CONSTRAINT ck_health_sources_staleness CHECK (staleness_threshold_s BETWEEN 5 AND 86400),
    ADD CONSTRAINT ck_health_sources_interval CHECK (check_interval_s BETWEEN 1 AND 3600),
    ADD CONSTRAINT ck_health_sources_failure_threshold CHECK (failure_threshold BETWEEN 1 AND 100),
    ADD CONSTRAINT ck_health_sources_success_threshold CHECK (success_threshold BETWEEN 1 AND 100),
    ADD CONSTRAINT ck_health_sources_status CHECK (status IN ('healthy', 'degraded', 'unhealthy')),
    ADD CONSTRAINT ck_health_sources_counters CHECK (
        consecutive_failures >= 0 AND consecutive_successes >= 0);

-- The prober's claim: due rows in due order.
CREATE INDEX ix_hsrc_next_check ON health_sources (next_check_at);
