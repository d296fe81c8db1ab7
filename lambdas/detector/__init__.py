"""Cost anomaly detection and attribution.

`core` is the pure detection engine (no I/O, time passed in), shared by the live detector
(`service`, `cct serve detector`) and the backtest (`lambdas.backtest`, `cct backtest`).
"""
