-- What the detector writes since it reports one incident per root cause (0700), read back by
-- the dashboards. The first views were written for rows that listed contributors at every
-- level; the detector's rows differ in three ways the dashboards lost:
--   * a resource-level anomaly (the usual root cause) lists no contributors: it is its own
--     cause, so "Ranked contributors" showed nothing for it;
--   * the aggregates it explains (service, team, account) are kept in `ancestors`, which no
--     view read;
--   * a team-level anomaly's dimensions are {team} only (a team spans accounts), so a
--     dashboard drilled down to one account or env never showed it.

-- In the public schema, as tag_value (0703): the generated columns below evaluate them with
-- the writer's privileges, and the detector's role may not use the `reporting` schema
-- (tests/pg_credentials/test_detector.py caught "permission denied for schema reporting").

-- The one value that the elements of a contributors or ancestors list agree on for `name`
-- in their labels, or null when they name none or several. Elements without that label (a
-- team ancestor names no account) do not count; malformed elements are skipped.
create function public.shared_label(items jsonb, name text) returns text
    language sql immutable parallel safe
    as $$
select case when count(distinct l.value) = 1 then min(l.value) end
  from jsonb_array_elements(case when jsonb_typeof(items) = 'array' then items else '[]' end) e
 cross join lateral (
       select case when jsonb_typeof(e.value -> 'labels') = 'object'
                   then e.value -> 'labels' ->> name end) l(value)
$$;

-- A filter dimension of an anomaly: its own label, else the value its contributors and the
-- aggregates it explains all share (a team whose listed resources are all in one account
-- shows under that account), else ''.
create function public.anomaly_label(
    dimensions jsonb, contributors jsonb, ancestors jsonb, name text
) returns text
    language sql immutable parallel safe
    as $$
select coalesce(
    nullif(dimensions ->> name, ''),
    public.shared_label(
        (case when jsonb_typeof(contributors) = 'array' then contributors else '[]' end)
        || (case when jsonb_typeof(ancestors) = 'array' then ancestors else '[]' end),
        name),
    '')
$$;

-- Stored, so the dashboards' filters read plain columns with statistics (the planner then
-- keeps its index-ordered plans; computed in the view, a 7-day contributors query at 50,000
-- anomalies took 28 ms instead of 3, benchmarks/dashboard_sql.py), and the drill-down to one
-- account has an index.
alter table anomalies
    add column shown_provider text not null
        generated always as (public.anomaly_label(dimensions, contributors, ancestors,
                                                     'provider')) stored,
    add column shown_billing_account_id text not null
        generated always as (public.anomaly_label(dimensions, contributors, ancestors,
                                                     'billing_account_id')) stored,
    add column shown_team text not null
        generated always as (public.anomaly_label(dimensions, contributors, ancestors,
                                                     'team')) stored,
    add column shown_env text not null
        generated always as (public.anomaly_label(dimensions, contributors, ancestors,
                                                     'env')) stored;

drop index anomalies_account_idx;
create index anomalies_account_idx on anomalies (shown_billing_account_id, started_at desc);

-- Column names, types and order stay those of 0600 (dependent views and dashboards read
-- them); new columns are appended.
create or replace view reporting.anomalies as
select a.fingerprint,
       a.started_at,
       a.resolved_at,
       a.resolved_at is null                                  as is_open,
       a.rule,
       a.level,
       a.severity,
       a.shown_provider                                       as provider,
       a.shown_billing_account_id                             as billing_account_id,
       coalesce(a.dimensions ->> 'service_name', '')          as service_name,
       coalesce(a.dimensions ->> 'region_id', '')             as region_id,
       a.shown_team                                           as team,
       a.shown_env                                            as env,
       coalesce(a.dimensions ->> 'resource_id', '')           as resource_id,
       reporting.labels_text(a.dimensions)                    as dimensions_text,
       a.expected_usd_per_hour,
       a.observed_usd_per_hour,
       a.observed_usd_per_hour - a.expected_usd_per_hour      as delta_usd_per_hour,
       a.deviation,
       jsonb_array_length(a.contributors)                     as contributor_count,
       reporting.labels_text(a.contributors -> 0 -> 'labels') as top_contributor,
       jsonb_array_length(a.change_events)                    as change_event_count,
       extract(epoch from coalesce(a.resolved_at, now()) - a.started_at) as duration_s,
       case when jsonb_typeof(a.ancestors) = 'array' then jsonb_array_length(a.ancestors)
            else 0 end                                        as ancestor_count
  from anomalies a;

-- A resource-level anomaly with no contributors is its own one contributor: rank 1, the
-- whole increase. Read from the table itself, not joined back to reporting.anomalies, so a
-- time-ordered query stops after its first rows.
create or replace view reporting.anomaly_contributors as
select raw.fingerprint,
       raw.started_at,
       raw.severity,
       raw.resolved_at is null                                       as is_open,
       raw.shown_provider                                            as provider,
       raw.shown_billing_account_id                                  as billing_account_id,
       raw.shown_team                                                as team,
       raw.shown_env                                                 as env,
       c.ordinality::integer                                         as rank,
       coalesce(c.value ->> 'level', '')                             as level,
       reporting.labels_text(c.value -> 'labels')                    as contributor,
       coalesce(c.value -> 'labels' ->> 'resource_id', '')           as resource_id,
       coalesce(c.value -> 'labels' ->> 'service_name',
                raw.dimensions ->> 'service_name', '')               as service_name,
       coalesce(c.value -> 'labels' ->> 'region_id',
                raw.dimensions ->> 'region_id', '')                  as region_id,
       reporting.jsonb_number(c.value -> 'share')::double precision  as share,
       reporting.jsonb_number(c.value -> 'delta_usd_per_hour')       as delta_usd_per_hour
  from anomalies raw
 cross join lateral jsonb_array_elements(
           case when jsonb_typeof(raw.contributors) = 'array'
                     and jsonb_array_length(raw.contributors) > 0 then raw.contributors
                when raw.level = 'resource' then jsonb_build_array(jsonb_build_object(
                     'level', 'resource',
                     'labels', raw.dimensions,
                     'share', 1,
                     'delta_usd_per_hour',
                     raw.observed_usd_per_hour - raw.expected_usd_per_hour))
                else '[]'::jsonb end) with ordinality c;

-- One row per (anomaly, aggregate it explains), deepest first as the detector lists them
-- (Report.ancestors_json: level, labels, rule, severity, started_at, expected/observed/delta
-- per hour). The filter columns are the anomaly's, so a drill-down shows an anomaly with
-- all its context.
create view reporting.anomaly_ancestors as
select raw.fingerprint,
       raw.started_at,
       raw.severity,
       raw.resolved_at is null                                         as is_open,
       raw.shown_provider                                              as provider,
       raw.shown_billing_account_id                                    as billing_account_id,
       raw.shown_team                                                  as team,
       raw.shown_env                                                   as env,
       raw.level                                                       as anomaly_level,
       reporting.labels_text(raw.dimensions)                           as anomaly,
       c.ordinality::integer                                           as position,
       coalesce(c.value ->> 'level', '')                               as level,
       reporting.labels_text(c.value -> 'labels')                      as aggregate,
       coalesce(c.value ->> 'rule', '')                                as rule,
       reporting.jsonb_number(c.value -> 'expected_usd_per_hour')      as expected_usd_per_hour,
       reporting.jsonb_number(c.value -> 'observed_usd_per_hour')      as observed_usd_per_hour,
       reporting.jsonb_number(c.value -> 'delta_usd_per_hour')         as delta_usd_per_hour
  from anomalies raw
 cross join lateral jsonb_array_elements(
           case when jsonb_typeof(raw.ancestors) = 'array' then raw.ancestors
                else '[]'::jsonb end) with ordinality c;

-- As in 0600, read from the table directly (same reason as anomaly_contributors).
create or replace view reporting.anomaly_change_events as
select raw.fingerprint,
       raw.started_at,
       raw.severity,
       raw.shown_provider                                                    as provider,
       raw.shown_billing_account_id                                          as billing_account_id,
       raw.shown_team                                                        as team,
       raw.shown_env                                                         as env,
       coalesce(e.value ->> 'event_id', '')                                  as event_id,
       coalesce(reporting.try_timestamptz(e.value ->> 'event_time'), re.event_time) as event_time,
       coalesce(e.value ->> 'action', re.action, '')                         as action,
       coalesce(e.value ->> 'actor', re.actor, '')                           as actor,
       coalesce(e.value ->> 'resource_id', re.resource_id, '')               as resource_id,
       coalesce(e.value ->> 'pulumi_stack', re.tags ->> 'pulumi:stack', '')  as pulumi_stack,
       coalesce(reporting.jsonb_number(e.value -> 'usd_per_hour_after'), re.usd_per_hour_after, 0)
         - coalesce(reporting.jsonb_number(e.value -> 'usd_per_hour_before'),
                    re.usd_per_hour_before, 0)                               as delta_usd_per_hour
  from anomalies raw
 cross join lateral jsonb_array_elements(
           case when jsonb_typeof(raw.change_events) = 'array' then raw.change_events
                else '[]'::jsonb end) e
  left join resource_events re on re.event_id = e.value ->> 'event_id';
