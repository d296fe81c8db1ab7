-- The trigger's pre-check counts the optimization actions started per account in the last
-- hour (the policy engine's blast-radius input); this keeps that count an index range scan
-- however many runs accumulate.
create index optimization_runs_account_time_idx
    on optimization_runs (billing_account_id, created_at desc)
    where state <> 'denied' and parameters ->> 'dry-run' = 'false';
