"""`loopline ui`: one web page per registered model for operators: what is served, how it
is doing, what changed, and promote or roll back with a diff in front of them.

`facts` reads what the page shows (registry, prediction log, monitoring table) as plain
data; `services` asks running services for their model, readiness and metrics; `app` is the
web application (FastAPI, server-rendered page, uPlot pictures served from this package).
"""
