-- Read side of the results store: the `reporting` schema holds the views the Grafana
-- dashboards read, so the dashboards depend on one stable, documented surface rather than on
-- every area's tables, and Grafana's database role can be limited to `select` on this schema.
-- Missing dimensions read as '' (never null) so one regex filter `^(...)$` matches both
-- "any value" (Grafana's All = .*) and untagged rows.

create schema reporting;

-- Indexes for the dashboard queries (time-range scans and per-account filters) and for
-- retention (time-ordered deletes of finished rows).
create index anomalies_started_idx on anomalies (started_at desc);
create index anomalies_resolved_idx on anomalies (resolved_at) where resolved_at is not null;
-- The same expression as reporting.anomalies.billing_account_id, so a drill-down to one account
-- (an anchored regex, a range scan under the C collation CloudNativePG uses) can use it.
create index anomalies_account_idx
    on anomalies ((coalesce(dimensions ->> 'billing_account_id', '')), started_at desc);
create index optimization_runs_created_idx on optimization_runs (created_at desc);
create index optimization_runs_finished_idx
    on optimization_runs (finished_at desc) where finished_at is not null;
create index optimization_runs_awaiting_idx
    on optimization_runs (created_at) where state = 'awaiting_approval';
create index policy_decisions_run_idx on policy_decisions (run_id) where run_id is not null;
create index optimization_actions_executed_idx on optimization_actions (executed_at desc);
create index resource_events_account_idx on resource_events (billing_account_id, event_time desc);
create index resource_inventory_deleted_idx
    on resource_inventory (last_event_time) where state = 'deleted';
create index billing_hourly_hour_idx on billing_hourly (hour);

-- A jsonb value as a number, or null when it is not one: a malformed contributor written by a
-- future release must blank one cell, not fail the whole dashboard query.
create function reporting.jsonb_number(value jsonb) returns numeric
    language sql immutable parallel safe
    as $$ select case when jsonb_typeof(value) = 'number' then (value #>> '{}')::numeric end $$;

-- A jsonb object as "k=v, k=v" sorted by key; '' for anything that is not an object.
create function reporting.labels_text(value jsonb) returns text
    language sql immutable parallel safe
    as $$
select coalesce(string_agg(d.key || '=' || d.value, ', ' order by d.key), '')
  from jsonb_each_text(case when jsonb_typeof(value) = 'object' then value else '{}' end) d
$$;

-- Text as a timestamp, or null when it does not parse (same reason as above). Parallel
-- unsafe: the exception block is a subtransaction, which PostgreSQL refuses while a parallel
-- query runs (in the leader too), so a query calling this must not be planned in parallel.
create function reporting.try_timestamptz(value text) returns timestamptz
    language plpgsql stable parallel unsafe
    as $$
begin
    return value::timestamptz;
exception when data_exception then
    return null;
end
$$;

create view reporting.anomalies as
select a.fingerprint,
       a.started_at,
       a.resolved_at,
       a.resolved_at is null                                  as is_open,
       a.rule,
       a.level,
       a.severity,
       coalesce(a.dimensions ->> 'provider', '')              as provider,
       coalesce(a.dimensions ->> 'billing_account_id', '')    as billing_account_id,
       coalesce(a.dimensions ->> 'service_name', '')          as service_name,
       coalesce(a.dimensions ->> 'region_id', '')             as region_id,
       coalesce(a.dimensions ->> 'team', '')                  as team,
       coalesce(a.dimensions ->> 'env', '')                   as env,
       coalesce(a.dimensions ->> 'resource_id', '')           as resource_id,
       reporting.labels_text(a.dimensions)                    as dimensions_text,
       a.expected_usd_per_hour,
       a.observed_usd_per_hour,
       a.observed_usd_per_hour - a.expected_usd_per_hour      as delta_usd_per_hour,
       a.deviation,
       jsonb_array_length(a.contributors)                     as contributor_count,
       reporting.labels_text(a.contributors -> 0 -> 'labels') as top_contributor,
       jsonb_array_length(a.change_events)                    as change_event_count,
       extract(epoch from coalesce(a.resolved_at, now()) - a.started_at) as duration_s
  from anomalies a;

-- One row per (anomaly, contributor), rank 1 = the largest share of the increase. Each element
-- is the detector's Contributor.as_json(): level, labels {...}, expected_usd_per_hour,
-- observed_usd_per_hour, delta_usd_per_hour, share.
create view reporting.anomaly_contributors as
select a.fingerprint,
       a.started_at,
       a.severity,
       a.is_open,
       a.provider,
       a.billing_account_id,
       a.team,
       a.env,
       c.ordinality::integer                                         as rank,
       coalesce(c.value ->> 'level', '')                             as level,
       reporting.labels_text(c.value -> 'labels')                    as contributor,
       coalesce(c.value -> 'labels' ->> 'resource_id', '')           as resource_id,
       coalesce(c.value -> 'labels' ->> 'service_name', a.service_name) as service_name,
       coalesce(c.value -> 'labels' ->> 'region_id', a.region_id)    as region_id,
       reporting.jsonb_number(c.value -> 'share')::double precision  as share,
       reporting.jsonb_number(c.value -> 'delta_usd_per_hour')       as delta_usd_per_hour
  from reporting.anomalies a
  join anomalies raw using (fingerprint, started_at)
 cross join lateral jsonb_array_elements(
           case when jsonb_typeof(raw.contributors) = 'array' then raw.contributors
                else '[]'::jsonb end) with ordinality c;

-- The change events the detector linked to each anomaly (ChangeEvent.as_json(): event_id,
-- resource_id, action, actor, event_time, usd_per_hour_before/after, pulumi_project/stack when
-- tagged), completed from resource_events when the anomaly's copy lacks a field. The anomaly
-- keeps its copy after retention removes the event row.
create view reporting.anomaly_change_events as
select a.fingerprint,
       a.started_at,
       a.severity,
       a.provider,
       a.billing_account_id,
       a.team,
       a.env,
       coalesce(e.value ->> 'event_id', '')                                  as event_id,
       coalesce(reporting.try_timestamptz(e.value ->> 'event_time'), re.event_time) as event_time,
       coalesce(e.value ->> 'action', re.action, '')                         as action,
       coalesce(e.value ->> 'actor', re.actor, '')                           as actor,
       coalesce(e.value ->> 'resource_id', re.resource_id, '')               as resource_id,
       coalesce(e.value ->> 'pulumi_stack', re.tags ->> 'pulumi:stack', '')  as pulumi_stack,
       coalesce(reporting.jsonb_number(e.value -> 'usd_per_hour_after'), re.usd_per_hour_after, 0)
         - coalesce(reporting.jsonb_number(e.value -> 'usd_per_hour_before'),
                    re.usd_per_hour_before, 0)                               as delta_usd_per_hour
  from reporting.anomalies a
  join anomalies raw using (fingerprint, started_at)
 cross join lateral jsonb_array_elements(
           case when jsonb_typeof(raw.change_events) = 'array' then raw.change_events
                else '[]'::jsonb end) e
  left join resource_events re on re.event_id = e.value ->> 'event_id';

-- Every accepted lifecycle event with its run-rate change and the team/env tags.
create view reporting.change_events as
select e.event_id,
       e.event_time,
       e.provider,
       e.billing_account_id,
       e.sub_account_id,
       e.region_id,
       e.service_name,
       e.resource_id,
       e.resource_type,
       e.action,
       coalesce(e.actor, '')                                                   as actor,
       coalesce(e.tags ->> 'team', '')                                         as team,
       coalesce(e.tags ->> 'env', '')                                          as env,
       coalesce(e.tags ->> 'pulumi:stack', '')                                 as pulumi_stack,
       e.usd_per_hour_before,
       e.usd_per_hour_after,
       coalesce(e.usd_per_hour_after, 0) - coalesce(e.usd_per_hour_before, 0) as delta_usd_per_hour
  from resource_events e;

create view reporting.optimization_runs as
select r.run_id,
       r.event_id,
       r.playbook,
       r.backend,
       r.state,
       coalesce(r.reason, '')                                       as reason,
       coalesce(r.provider, '')                                     as provider,
       coalesce(r.billing_account_id, '')                           as billing_account_id,
       coalesce(r.resource_id, '')                                  as resource_id,
       coalesce(r.team, '')                                         as team,
       coalesce(r.environment, '')                                  as env,
       r.estimated_monthly_saving_usd,
       r.verified_monthly_saving_usd,
       r.created_at,
       r.updated_at,
       r.finished_at,
       extract(epoch from coalesce(r.finished_at, now()) - r.created_at) as age_s
  from optimization_runs r;

-- Policy verdicts with the run's dimensions; a decision with no run row yet (an admission
-- review of a workflow the trigger did not create) takes them from its input, which holds
-- the workflow parameters (docs/architecture.md section 6).
create view reporting.policy_decisions as
select d.decision_id,
       d.decided_at,
       d.source,
       d.verdict,
       coalesce(d.run_id, '')                                                  as run_id,
       coalesce(r.playbook, '')                                                as playbook,
       array_to_string(d.policy_ids, ', ')                                     as policy_ids,
       array_to_string(d.reasons, '; ')                                        as reasons,
       coalesce(r.provider, d.input ->> 'provider', '')                        as provider,
       coalesce(r.billing_account_id, d.account_id, d.input ->> 'account-id', '')
                                                                               as billing_account_id,
       coalesce(r.team, d.input ->> 'team', '')                                as team,
       coalesce(r.environment, d.input ->> 'environment', '')                  as env,
       coalesce(r.resource_id, d.input ->> 'resource-id', '')                  as resource_id
  from policy_decisions d
  left join optimization_runs r on r.run_id = d.run_id;

-- Runs waiting for a human, with why they need one (the newest require-approval verdict).
create view reporting.pending_approvals as
select r.run_id,
       r.playbook,
       r.provider,
       r.billing_account_id,
       r.resource_id,
       r.team,
       r.env,
       r.estimated_monthly_saving_usd,
       r.created_at,
       r.age_s,
       coalesce(d.policy_ids, '') as policy_ids,
       coalesce(d.reasons, '')    as reasons
  from reporting.optimization_runs r
  left join lateral (
        -- The table, not the view: the view's coalesce(run_id, '') would hide the index.
        select array_to_string(p.policy_ids, ', ') as policy_ids,
               array_to_string(p.reasons, '; ')    as reasons
          from policy_decisions p
         where p.run_id = r.run_id and p.verdict = 'require-approval'
         order by p.decided_at desc
         limit 1) d on true
 where r.state = 'awaiting_approval';

create view reporting.optimization_actions as
select a.run_id,
       a.action,
       a.resource_id,
       a.dry_run,
       a.outcome,
       coalesce(a.reason, '')   as reason,
       a.before_state,
       a.after_state,
       a.estimated_monthly_saving_usd,
       a.verified_monthly_saving_usd,
       a.executed_at,
       r.playbook,
       r.provider,
       r.billing_account_id,
       r.team,
       r.env
  from optimization_actions a
  join reporting.optimization_runs r using (run_id);

-- Monthly savings of runs that changed something (dry runs and failures save nothing), by the
-- month the run finished. `estimated` is what planning promised, `verified` what `verify`
-- measured afterwards; a run not verified yet counts in `estimated` and `unverified_runs`.
create view reporting.savings_by_team_month as
select date_trunc('month', r.finished_at)                          as month,
       r.team,
       r.env,
       r.provider,
       r.billing_account_id,
       count(*)                                                    as runs,
       count(*) filter (where r.verified_monthly_saving_usd is null) as unverified_runs,
       coalesce(sum(r.estimated_monthly_saving_usd), 0)            as estimated_monthly_saving_usd,
       coalesce(sum(r.verified_monthly_saving_usd), 0)             as verified_monthly_saving_usd
  from reporting.optimization_runs r
 where r.state = 'succeeded' and r.finished_at is not null
 group by 1, 2, 3, 4, 5;

-- Rejected ingest input without its payload (which may hold whatever a sender put in it).
create view reporting.ingest_dead_letters as
select id, source, reason, detail, received_at
  from ingest_dead_letters;

-- Billing export deliveries: which partition was loaded when, and whether it is still current.
create view reporting.billing_loads as
select provider,
       billing_account_id,
       billing_period,
       load_id,
       status,
       rows_read,
       cardinality(sources) as files,
       loaded_at
  from billing_loads;

-- Retention setting: how many days each relation keeps its finished rows. `cct db retention`
-- reads it (lambdas/store/results.py says which rows count as finished for each relation).
create table retention_policy (
    relation    text        primary key,
    keep_days   integer     not null check (keep_days >= 1),
    updated_at  timestamptz not null default now()
);
insert into retention_policy (relation, keep_days) values
    ('anomalies', 730),             -- resolved incidents: two years of history for audits
    ('policy_decisions', 730),      -- verdicts are audit records
    ('optimization_runs', 1095),    -- finished runs with their actions: savings history
    ('resource_events', 90),        -- high volume; anomalies keep their own copy of the events
    ('resource_inventory', 30),     -- rows of deleted resources
    ('ingest_dead_letters', 30),    -- rejected input, kept long enough to diagnose and replay
    ('billing_hourly', 400);        -- thirteen months: this month against the same month last year
