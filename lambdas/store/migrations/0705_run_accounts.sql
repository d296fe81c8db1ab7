-- A run's two accounts. The trigger wrote the account the workflow acts in (the anomaly's
-- sub_account_id: an AWS linked account, Azure subscription, GCP project) into
-- billing_account_id, the column the optimizations dashboard and reporting views filter on
-- with the cost dashboards' billing account (the AWS payer, Azure or GCP billing account).
-- So with one billing account selected, every run of its linked accounts vanished from the
-- runs, savings, approvals and decisions panels. Found when the dashboards' tests took
-- their runs from the trigger's real planning instead of hand-written rows.
--
-- billing_account_id is now the anomaly's billing account; account_id is the account acted
-- in, which the pre-check's blast-radius count (`recent_actions`) reads.
alter table optimization_runs add column account_id text;

-- Rows written before: the column held the acted-in account. Their billing account is the
-- one the collector's inventory records for the resource in that account, when it still
-- has the row (deleted resources are kept 30 days); otherwise they keep the acted-in one.
update optimization_runs set account_id = billing_account_id;
update optimization_runs r
   set billing_account_id = i.billing_account_id
  from resource_inventory i
 where i.provider = r.provider
   and i.resource_id = r.resource_id
   and i.sub_account_id = r.account_id;

drop index optimization_runs_account_time_idx;
create index optimization_runs_account_time_idx
    on optimization_runs (account_id, created_at desc)
    where state <> 'denied' and parameters ->> 'dry-run' = 'false';
-- During a rolling upgrade the trigger pods of the previous release still insert runs
-- without account_id (the acted-in account in billing_account_id); `recent_actions` counts
-- those through this (small) index too, so the blast radius is not undercounted meanwhile.
create index optimization_runs_unmigrated_account_time_idx
    on optimization_runs (billing_account_id, created_at desc)
    where account_id is null and state <> 'denied' and parameters ->> 'dry-run' = 'false';

-- The acted-in account, for the runs table (appended: the views built on this one keep
-- their columns).
create or replace view reporting.optimization_runs as
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
       extract(epoch from coalesce(r.finished_at, now()) - r.created_at) as age_s,
       coalesce(r.account_id, '')                                   as account_id
  from optimization_runs r;

-- A decision without a run row (an admission review of a workflow the trigger did not
-- create) names only the acted-in account (its account_id, its input's account-id): its
-- billing account is the inventory's for its resource, so it shows under the billing
-- account like the runs.
create or replace view reporting.policy_decisions as
select d.decision_id,
       d.decided_at,
       d.source,
       d.verdict,
       coalesce(d.run_id, '')                                                  as run_id,
       coalesce(r.playbook, '')                                                as playbook,
       array_to_string(d.policy_ids, ', ')                                     as policy_ids,
       array_to_string(d.reasons, '; ')                                        as reasons,
       coalesce(r.provider, d.input -> 'parameters' ->> 'provider', '')        as provider,
       coalesce(r.billing_account_id, i.billing_account_id, d.account_id,
                d.input -> 'parameters' ->> 'account-id', '')                  as billing_account_id,
       coalesce(r.team, d.input -> 'parameters' ->> 'team', '')                as team,
       coalesce(r.environment, d.input -> 'parameters' ->> 'environment', '')  as env,
       coalesce(r.resource_id, d.input -> 'parameters' ->> 'resource-id', '')  as resource_id
  from policy_decisions d
  left join optimization_runs r on r.run_id = d.run_id
  left join resource_inventory i
         on r.run_id is null
        and i.provider = d.input -> 'parameters' ->> 'provider'
        and i.resource_id = d.input -> 'parameters' ->> 'resource-id';
