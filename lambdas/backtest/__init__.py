"""The backtest: CCT's detection core run over historical FOCUS exports, and the labeled sample
dataset (`cct sample-data`) it is demonstrated and benchmarked on."""
