-- Provisioned performance is priced per month like storage: EBS io1/io2/gp3 and RDS IOPS
-- (IOPS-month) and gp3 throughput above the included baseline (MiB/s-month).
alter table price_catalog drop constraint price_catalog_unit_check;
alter table price_catalog add constraint price_catalog_unit_check
    check (unit in ('hour', 'gib_month', 'request', 'iops_month', 'mibps_month'));
