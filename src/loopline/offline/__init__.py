"""The offline process: from a source's rows to a published model version.

One module per stage of the flow (`pipelines/offline.py` wires them): `ingest` and
`datastore` (a versioned snapshot), `validate` (the data contract, bad rows quarantined),
`features`, `labeling` and `human_labels`/`active_learning` (people in the loop), `split`
and `membership` (which set a row is in, for ever), `tune`, `train` and `transfer`,
`evaluate` and `gate` (the candidate against its baselines and the champion), `export`
(ONNX), `reference` (what the monitor compares live data with) and `publishing` (the
registry's version, its tags and the champion alias). Nothing here imports Prefect.
"""
