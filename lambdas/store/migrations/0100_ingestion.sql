-- Ingestion bookkeeping: rejected input, billing export loads, hourly billed cost and the
-- reconciliation factors between the run-rate estimate and the bill.

-- Input the collector or the billing loader could not use, with the reason. Nothing is
-- dropped silently: every rejected event or file lands here (payload cut to 64 KiB).
create table ingest_dead_letters (
    id          bigserial   primary key,
    source      text        not null,          -- collector | billing
    reason      text        not null,          -- machine-readable code, e.g. missing_field
    detail      text        not null,          -- human-readable, names the problem
    payload     text        not null,
    received_at timestamptz not null default now()
);
create index ingest_dead_letters_time_idx on ingest_dead_letters (received_at desc);

-- One row per billing partition (provider, billing account, billing period) and delivery.
-- load_id is derived from the delivery's content, so reloading the same files is a no-op;
-- a new delivery for the same partition supersedes the old one (its hours are replaced).
create table billing_loads (
    load_id             text        not null,
    provider            text        not null,
    billing_account_id  text        not null,
    billing_period      text        not null,   -- YYYY-MM of BillingPeriodStart
    sources             text[]      not null,
    rows_read           bigint      not null,
    status              text        not null check (status in ('current', 'superseded')),
    loaded_at           timestamptz not null default now(),
    primary key (provider, billing_account_id, billing_period, load_id)
);
create unique index billing_loads_current_idx on billing_loads (provider, billing_account_id, billing_period)
    where status = 'current';

-- Billed cost per hour and label set of the current delivery of each partition; the source of
-- the reconciliation and of the cct_billed_cost_usd series.
create table billing_hourly (
    provider            text        not null,
    billing_account_id  text        not null,
    billing_period      text        not null,
    load_id             text        not null,
    sub_account_id      text        not null,
    region_id           text        not null,
    service_name        text        not null,
    team                text        not null,
    env                 text        not null,
    hour                timestamptz not null,
    billed_cost         double precision not null,
    effective_cost      double precision not null,
    list_cost           double precision not null
);
create index billing_hourly_partition_idx on billing_hourly (provider, billing_account_id, billing_period);
create index billing_hourly_service_idx on billing_hourly (provider, billing_account_id, service_name, hour);

-- Latest reconciliation per (provider, billing account, service): EffectiveCost / estimated
-- list cost over a trailing window that the bill fully covers.
create table cost_reconciliation (
    provider            text        not null,
    billing_account_id  text        not null,
    service_name        text        not null,
    window_start        timestamptz not null,
    window_end          timestamptz not null,
    billed_usd          double precision not null,
    estimated_usd       double precision not null,
    factor              double precision not null,
    computed_at         timestamptz not null default now(),
    primary key (provider, billing_account_id, service_name)
);
