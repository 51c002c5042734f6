-- RecordCheckResult is rate-limited per source (PLATFORM_ADMIN_RECORD_RESULT_MIN_INTERVAL_S):
-- the time of the last pushed result is kept on the source row, which recording a result
-- locks anyway, so the limit holds across every process and replica. Prober results do not
-- touch it (they are bounded by check_interval_s).
ALTER TABLE health_sources ADD COLUMN last_pushed_at TIMESTAMPTZ;
