-- A run's two accounts. The trigger wrote the account the workflow acts in (the anomaly's
-- sub_account_id: an AWS linked account, Azure subscription, GCP project) into
-- billing_account_id, the column the optimizations dashboard and reporting views filter on
-- with the cost dashboards' billing account (the AWS payer, Azure or GCP billing account).
-- So with one billing account selected, every run of its linked accounts vanished from the
-- runs, savings, approvals and decisions panels. Found when the dashboards' tests took
-- their runs from the trigger's real planning instead of hand-written rows.
--
-- billing_account_id is now the anomaly's billing account; account_id is the account acted
-- in, which the pre-check's blast-radius count (`recent_actions`) reads. Rows written
-- before this migration held the acted-in account in billing_account_id: it is copied to
-- account_id, and their billing account cannot be recovered (their parameters do not name
-- it), so they keep showing under the linked account.
alter table optimization_runs add column account_id text;
update optimization_runs set account_id = billing_account_id;

drop index optimization_runs_account_time_idx;
create index optimization_runs_account_time_idx
    on optimization_runs (account_id, created_at desc)
    where state <> 'denied' and parameters ->> 'dry-run' = 'false';
