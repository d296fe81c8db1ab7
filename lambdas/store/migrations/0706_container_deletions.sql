-- Deleted containers (an Azure resource group, a SQL logical server): Event Grid raises one
-- deletion for the container and none for what it holds, and delivers events in no order.
-- The collector deletes every live resource under a deleted container; this table keeps the
-- deletion so that a resource's write that arrives later (or was still queued), dated no
-- later than the deletion, is taken as that resource's deletion too, also after a restart.
-- One row per container: its newest deletion (a group deleted, created again, deleted).
create table container_deletions (
    provider      text        not null check (provider in ('aws', 'azure', 'gcp')),
    container_id  text        not null,
    deleted_at    timestamptz not null,
    event_id      text        not null,
    action        text        not null,
    received_at   timestamptz not null default now(),
    primary key (provider, container_id)
);

-- Kept as long as deleted resources' inventory rows: a write dated before a deletion a month
-- old is far beyond any redelivery, and the billing export's reconciliation covers it.
insert into retention_policy (relation, keep_days) values ('container_deletions', 30);
