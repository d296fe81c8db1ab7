-- A decision without a run row takes its dimensions from the workflow parameters, which
-- both producers (the admission webhook, the trigger's pre-check) keep under
-- input.parameters (`lambdas.store.decisions.decision_input`). 0600 read them from the top
-- level of input, where nothing writes them: a hand-submitted workflow's denial showed no
-- provider, team, env or resource and vanished under any dashboard filter.
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
       coalesce(r.billing_account_id, d.account_id,
                d.input -> 'parameters' ->> 'account-id', '')                  as billing_account_id,
       coalesce(r.team, d.input -> 'parameters' ->> 'team', '')                as team,
       coalesce(r.environment, d.input -> 'parameters' ->> 'environment', '')  as env,
       coalesce(r.resource_id, d.input -> 'parameters' ->> 'resource-id', '')  as resource_id
  from policy_decisions d
  left join optimization_runs r on r.run_id = d.run_id;
