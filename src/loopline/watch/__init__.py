"""Watching what is served: the monitor (drift and live quality of the prediction log
against each version's reference profile, with calibrated thresholds) and the deploy
policy (a shadow or canary challenger judged on paired live answers, then promoted or
rolled back). Both decide unattended; both only read what the online process logged.

The monitor's parts, by job: `statistics` (the two-sample tests), `calibration` (the
thresholds), `store` (the monitoring table), `logs` (what a pass reads), `columns` (which
inputs of a wide table), `monitor` (one pass), `report` (its page, picture and MLflow
run) and `retrain` (alarm to retrain).
"""
