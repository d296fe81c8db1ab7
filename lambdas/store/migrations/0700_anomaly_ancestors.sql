-- One incident per root cause: an anomaly reported at the resource that explains it keeps the
-- aggregates it explains (its service, team, account) as context instead of one row each.
alter table anomalies add column ancestors jsonb not null default '[]'::jsonb;
