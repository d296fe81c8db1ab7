-- The rule column admits every rule of the contract (lambdas.contract.RULES): the detector's
-- `decrease` (REPORT_DECREASES=1) and `local_step` rows were refused by the first list.
-- tests/store/test_anomaly_rules.py checks that this list and the contract's agree.
alter table anomalies drop constraint anomalies_rule_check;
alter table anomalies add constraint anomalies_rule_check
    check (rule in ('day0_step', 'seasonal', 'local_step', 'decrease', 'budget'));
