-- Admission decisions carry what the webhook needs to count recent actions per account (the
-- blast-radius input of the policy engine) without parsing JSON on every refresh: whether the
-- workflow was admitted, whether it was a dry run, and the account it acts in. Nullable, so
-- the pre-check's and the steps' rows need not fill them.
alter table policy_decisions
    add column allowed    boolean,
    add column dry_run    boolean,
    add column account_id text;

create index policy_decisions_admitted_idx on policy_decisions (decided_at desc)
    where source = 'admission' and allowed and not dry_run;
