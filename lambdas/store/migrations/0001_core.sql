-- Core results tables shared by several handlers. Area-specific tables come in later
-- migrations (see docs/architecture.md, section PostgreSQL, for who writes what).

-- One row per anomaly incident (one alert), keyed by the Alertmanager fingerprint plus the
-- start time so a recurrence after resolution is a new incident.
create table anomalies (
    fingerprint       text        not null,
    started_at        timestamptz not null,
    resolved_at       timestamptz,
    rule              text        not null check (rule in ('day0_step', 'seasonal', 'budget')),
    level             text        not null,
    severity          text        not null check (severity in ('info', 'warning', 'critical')),
    dimensions        jsonb       not null,          -- the alert's dimension labels
    expected_usd_per_hour numeric(18, 6) not null,
    observed_usd_per_hour numeric(18, 6) not null,
    deviation         double precision not null,
    contributors      jsonb       not null default '[]'::jsonb,
    change_events     jsonb       not null default '[]'::jsonb,
    updated_at        timestamptz not null default now(),
    primary key (fingerprint, started_at)
);
create index anomalies_open_idx on anomalies (started_at desc) where resolved_at is null;

-- One row per workflow, keyed by its deterministic name (event id + playbook), so a
-- redelivered event updates the same row instead of adding one.
create table optimization_runs (
    run_id            text        primary key,       -- the workflow name
    event_id          text        not null,
    playbook          text        not null,
    backend           text        not null,          -- argo | local
    state             text        not null check (state in (
                          'submitted', 'denied', 'awaiting_approval', 'running',
                          'succeeded', 'failed', 'dry_run')),
    reason            text,
    provider          text,
    billing_account_id text,
    resource_id       text,
    team              text,
    environment       text,
    parameters        jsonb       not null default '{}'::jsonb,
    estimated_monthly_saving_usd numeric(18, 2),
    verified_monthly_saving_usd  numeric(18, 2),
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    finished_at       timestamptz,
    unique (event_id, playbook)
);
create index optimization_runs_state_idx on optimization_runs (state, created_at desc);

-- Every policy verdict, from the trigger's pre-check or the admission webhook.
-- decision_id is the AdmissionReview uid or "<run_id>/precheck".
create table policy_decisions (
    decision_id       text        primary key,
    source            text        not null check (source in ('admission', 'precheck', 'step')),
    run_id            text,
    verdict           text        not null check (verdict in ('allow', 'deny', 'require-approval')),
    policy_ids        text[]      not null default '{}',
    reasons           text[]      not null default '{}',
    input             jsonb       not null,
    decided_at        timestamptz not null default now()
);
create index policy_decisions_time_idx on policy_decisions (decided_at desc);
create index policy_decisions_verdict_idx on policy_decisions (verdict, decided_at desc);

-- One row per action a workflow executed, with the resource state before and after.
create table optimization_actions (
    run_id            text        not null references optimization_runs (run_id),
    action            text        not null,
    resource_id       text        not null,
    dry_run           boolean     not null,
    outcome           text        not null check (outcome in (
                          'changed', 'already_done', 'dry_run', 'failed', 'restored')),
    reason            text,
    before_state      jsonb,
    after_state       jsonb,
    estimated_monthly_saving_usd numeric(18, 2),
    verified_monthly_saving_usd  numeric(18, 2),
    executed_at       timestamptz not null default now(),
    primary key (run_id, action, resource_id)
);
