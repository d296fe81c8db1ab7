-- A list price is a finite amount of at least $0. numeric admits 'NaN', and PostgreSQL sorts
-- NaN above every number, so `>= 0` alone lets it through; a NaN price would reach every
-- run-rate that uses the SKU. `cct prices load` rejects such rows before they get here
-- (lambdas.pricing.sources.row_problem); the constraint keeps every other writer out too.
-- A row that breaks it can only be garbage: it is removed so the constraint can be added.
delete from price_catalog where usd_per_unit = 'NaN' or usd_per_unit < 0;
alter table price_catalog add constraint price_catalog_price_check
    check (usd_per_unit >= 0 and usd_per_unit <> 'NaN');
