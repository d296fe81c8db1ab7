-- Resource inventory, the change events that moved it, and the price catalog. Written by the
-- collector and the price loader; read by the detector (attribution), the workflow steps
-- (planning) and the dashboards.

-- Current state of every resource CCT knows, one row per (provider, resource id).
-- last_event_time decides between out-of-order events: an older event never overwrites.
create table resource_inventory (
    provider            text        not null check (provider in ('aws', 'azure', 'gcp')),
    resource_id         text        not null,
    billing_account_id  text        not null,
    sub_account_id      text        not null,
    region_id           text        not null,
    service_name        text        not null,
    resource_type       text        not null,
    sku                 text,                         -- instance type, disk type, tier, ...
    size                jsonb       not null default '{}'::jsonb, -- e.g. {"gib": 100}
    state               text        not null,         -- running | stopped | deleted | ...
    tags                jsonb       not null default '{}'::jsonb,
    usd_per_hour        numeric(18, 6),               -- null = unpriced (flagged, never $0)
    priced              boolean     not null default false,
    last_event_id       text        not null,
    last_event_time     timestamptz not null,
    updated_at          timestamptz not null default now(),
    primary key (provider, resource_id)
);
create index resource_inventory_account_idx on resource_inventory (billing_account_id, service_name);

-- Every accepted lifecycle event, once (event_id is the provider's id). The detector links
-- anomalies to these rows: who did what, when, and how the run-rate moved.
create table resource_events (
    event_id            text        primary key,
    provider            text        not null,
    resource_id         text        not null,
    billing_account_id  text        not null,
    sub_account_id      text        not null,
    region_id           text        not null,
    service_name        text        not null,
    resource_type       text        not null,
    action              text        not null,         -- API call / operation name
    actor               text,
    event_time          timestamptz not null,
    tags                jsonb       not null default '{}'::jsonb,
    usd_per_hour_before numeric(18, 6),
    usd_per_hour_after  numeric(18, 6),
    received_at         timestamptz not null default now()
);
create index resource_events_time_idx on resource_events (event_time desc);
create index resource_events_resource_idx on resource_events (provider, resource_id, event_time desc);

-- Public list prices, normalised to USD per hour (compute, databases) or per GiB-month
-- (storage), keyed by the provider's own SKU identity.
create table price_catalog (
    provider            text        not null,
    service_name        text        not null,
    region_id           text        not null,
    sku                 text        not null,         -- e.g. m5.large, Standard_D2s_v3, gp3
    unit                text        not null check (unit in ('hour', 'gib_month', 'request')),
    usd_per_unit        numeric(18, 8) not null,
    source              text        not null,         -- which price file or API
    effective_from      timestamptz not null,
    loaded_at           timestamptz not null default now(),
    primary key (provider, service_name, region_id, sku, unit)
);
