-- A tag as the collector reads it (`lambdas.contract.tag_values`): the key matched
-- case-insensitively, an exact match first. The collector labels a resource tagged
-- `Team=web` team="web"; `tags ->> 'team'` found nothing, so the detector's team-level
-- attribution missed its change events and reporting.change_events showed no team or env.
create function tag_value(tags jsonb, name text) returns text
    language sql immutable parallel safe
    as $$
select coalesce(
    tags ->> name,
    (select t.value
       from jsonb_each_text(case when jsonb_typeof(tags) = 'object' then tags else '{}' end) t
      where lower(t.key) = lower(name)
      order by t.key
      limit 1))
$$;

create or replace view reporting.change_events as
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
       coalesce(tag_value(e.tags, 'team'), '')                                 as team,
       coalesce(tag_value(e.tags, 'env'), '')                                  as env,
       coalesce(e.tags ->> 'pulumi:stack', '')                                 as pulumi_stack,
       e.usd_per_hour_before,
       e.usd_per_hour_after,
       coalesce(e.usd_per_hour_after, 0) - coalesce(e.usd_per_hour_before, 0) as delta_usd_per_hour
  from resource_events e;

