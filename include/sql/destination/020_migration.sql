-- The pipeline's own state, in a private schema that anon and authenticated
-- cannot reach (Supabase exposes `public` through its API; this is not exposed).
-- Idempotent: applied on every bootstrap.

CREATE SCHEMA IF NOT EXISTS migration;
-- Per-run staging tables live here; dropped when their run has finished.
CREATE SCHEMA IF NOT EXISTS migration_stage;

REVOKE ALL ON SCHEMA migration, migration_stage FROM PUBLIC;
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON SCHEMA migration, migration_stage FROM %I', r);
      EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA migration, migration_stage FROM %I', r);
    END IF;
  END LOOP;
END $$;

-- One row per entity per DAG run: what it was asked to do and what it did.
CREATE TABLE IF NOT EXISTS migration.runs (
    run_id          text PRIMARY KEY,          -- '<entity>:<airflow run id>'
    entity          text NOT NULL,
    mode            text NOT NULL CHECK (mode IN ('full', 'incremental')),
    dry_run         boolean NOT NULL DEFAULT false,
    dag_run_id      text,
    status          text NOT NULL DEFAULT 'running',
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    scope           jsonb NOT NULL DEFAULT '{}',  -- since / until / retry keys: what was extracted
    stage_table     text,
    stage_rows      bigint,
    source_rows     bigint,                       -- rows of the source table (full runs)
    load_progress   text,                         -- last stage key whose chunk committed
    counts          jsonb NOT NULL DEFAULT '{}',  -- inserted / updated / unchanged / deleted ...
    report          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_entity_started ON migration.runs (entity, started_at DESC);

-- Where the next incremental run of an entity starts.
CREATE TABLE IF NOT EXISTS migration.watermarks (
    entity      text PRIMARY KEY,
    change_ts   timestamp,        -- legacy change timestamp (naive UTC, like the source)
    last_key    text,             -- append-only entities: the highest key loaded
    run_id      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The accounting of every run: in scope = loaded + excluded + quarantined.
CREATE TABLE IF NOT EXISTS migration.run_accounting (
    run_id       text NOT NULL REFERENCES migration.runs ON DELETE CASCADE,
    entity       text NOT NULL,
    disposition  text NOT NULL CHECK (disposition IN ('loaded', 'excluded', 'quarantined')),
    reason       text NOT NULL,
    rows         bigint NOT NULL,
    PRIMARY KEY (run_id, disposition, reason)
);

-- Rows that could not be loaded, kept whole, until a later run loads them.
CREATE TABLE IF NOT EXISTS migration.quarantine (
    entity         text NOT NULL,
    source_key     text NOT NULL,
    reason         text NOT NULL,
    source_row     jsonb,
    run_id         text NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, source_key)
);

-- Rows left out on purpose, by a documented rule (README: transform rules).
CREATE TABLE IF NOT EXISTS migration.exclusions (
    entity      text NOT NULL,
    source_key  text NOT NULL,
    rule        text NOT NULL,
    detail      text,
    run_id      text NOT NULL,  -- the run that recorded the current rule
    PRIMARY KEY (entity, source_key)
);

-- Duplicate accounts merged into one: every child row of a loser points at its survivor.
CREATE TABLE IF NOT EXISTS migration.user_id_map (
    loser_id     uuid PRIMARY KEY,
    survivor_id  uuid NOT NULL,
    email        text NOT NULL,
    run_id       text NOT NULL
);

-- Before-images of every destination row a run changed, for the rollback DAG.
CREATE TABLE IF NOT EXISTS migration.before_images (
    run_id      text NOT NULL,
    entity      text NOT NULL,
    op          text NOT NULL CHECK (op IN ('insert', 'insert_range', 'update', 'delete')),
    keys        text[],           -- insert: the keys of one chunk; insert_range: (lo, hi] of an empty range
    source_key  text,             -- updates / deletes: one row each
    row_image   jsonb,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS before_images_run ON migration.before_images (run_id);

-- Reconciliation verdicts with the keys that differ.
CREATE TABLE IF NOT EXISTS migration.reconciliations (
    run_id         text NOT NULL,
    entity         text NOT NULL,
    checked_at     timestamptz NOT NULL DEFAULT now(),
    verdict        text NOT NULL CHECK (verdict IN ('clean', 'differences')),
    source_rows    bigint NOT NULL,
    target_rows    bigint NOT NULL,
    buckets        integer NOT NULL,
    missing        jsonb NOT NULL DEFAULT '[]',
    extra          jsonb NOT NULL DEFAULT '[]',
    different      jsonb NOT NULL DEFAULT '[]',
    PRIMARY KEY (run_id, entity)
);

-- Who holds an entity's write lock (the lock itself is an advisory lock).
CREATE TABLE IF NOT EXISTS migration.locks (
    entity       text PRIMARY KEY,
    run_id       text NOT NULL,
    holder       text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now()
);

-- Schema-diff results and operator overrides (the load gate reads them).
CREATE TABLE IF NOT EXISTS migration.schema_checks (
    check_id    bigserial PRIMARY KEY,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    dag_run_id  text,
    verdict     text NOT NULL CHECK (verdict IN ('compatible', 'breaking')),
    blocked     jsonb NOT NULL DEFAULT '{}',   -- entity -> list of breaking difference ids
    report      jsonb NOT NULL
);

CREATE TABLE IF NOT EXISTS migration.schema_overrides (
    override_id    bigserial PRIMARY KEY,
    entity         text NOT NULL,
    difference_id  text NOT NULL,
    accepted_by    text NOT NULL,
    reason         text NOT NULL,
    run_id         text NOT NULL,
    accepted_at    timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON ALL TABLES IN SCHEMA migration FROM PUBLIC;

-- Every Storage write (or skip) of the media migration, one row per file per
-- attempt: outcome uploaded / skipped_identical / conflict / rejected_size /
-- rejected_mime / failed, and removed (an object whose row is gone). The
-- rollback removes the objects its runs 'uploaded'.
CREATE TABLE IF NOT EXISTS migration.media_uploads (
    run_id       text NOT NULL,
    object_path  text NOT NULL,
    outcome      text NOT NULL,
    detail       text,
    bytes        bigint,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS media_uploads_run ON migration.media_uploads (run_id);
CREATE INDEX IF NOT EXISTS media_uploads_path ON migration.media_uploads (object_path);
-- Created after the REVOKE above: the same lock-down, so a second bootstrap changes nothing.
REVOKE ALL ON TABLE migration.media_uploads FROM PUBLIC;

-- The console pages a reason's quarantined rows by key (include/sql/console/quarantine_page.sql).
CREATE INDEX IF NOT EXISTS quarantine_entity_reason ON migration.quarantine (entity, reason, source_key);

-- Pre-migration assessments of the legacy database (the assess_legacy DAG): a summary of
-- each, the whole report stays in its JSON file. The console shows the latest one.
CREATE TABLE IF NOT EXISTS migration.assessments (
    assessment_id  bigserial PRIMARY KEY,
    assessed_at    timestamptz NOT NULL DEFAULT now(),
    dag_run_id     text,
    summary        jsonb NOT NULL,
    report_path    text
);
REVOKE ALL ON TABLE migration.assessments FROM PUBLIC;

-- What the media migration proved about an object in Storage: when its
-- storage.objects row showed this id, version, eTag and updated_at, the
-- object's bytes (downloaded and hashed) had this SHA-256. A later run trusts
-- an object whose storage.objects row still shows the same version without
-- asking Storage (include/migration/media/catalog.py); any overwrite changes
-- the version, so the proof no longer applies.
CREATE TABLE IF NOT EXISTS migration.media_object_proofs (
    bucket             text NOT NULL,
    object_path        text NOT NULL,
    sha256             text NOT NULL,
    size_bytes         bigint NOT NULL,
    mime_type          text,
    object_id          uuid,
    version            text,
    etag               text,
    object_updated_at  timestamptz,
    run_id             text NOT NULL,
    proven_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, object_path)
);
REVOKE ALL ON TABLE migration.media_object_proofs FROM PUBLIC;
