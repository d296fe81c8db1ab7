-- The collector's write path, measured with benchmarks/collector_throughput.py: PostgreSQL
-- CPU per event is what bounds one collector's throughput on a small node.

-- Every event updates its resource's row. With free space left in each page the update is
-- HOT (heap-only: no new entries in the two inventory indexes), as no indexed column changes.
alter table resource_inventory set (fillfactor = 70);

-- The attribution query and retention select events by time range only; events arrive in
-- roughly time order, so a BRIN index serves those ranges at a fraction of a B-tree's insert
-- cost. Per-resource and per-account history keep their B-trees.
drop index resource_events_time_idx;
create index resource_events_time_brin on resource_events using brin (event_time);
