"""The service's Prometheus metrics: one set per process, in the service's own folder."""

from __future__ import annotations

import logging
import os
from typing import Any

from bentoml._internal.configuration.containers import BentoMLContainer
from prometheus_client import Counter, Gauge, Histogram

from loopline.watch.store import latest_signals

log = logging.getLogger("loopline.serving")

# The Prometheus multiprocess folder of this service: `PROMETHEUS_MULTIPROC_DIR`, which
# `loopline serve` sets to one per model and port under the state folder. BentoML itself
# ignores that variable and uses one folder per BENTOML_HOME, wiped by every start, so two
# services of one project would share and wipe each other's series.


def use_own_metrics_folder(model_name: str, environ: dict[str, str] | None = None) -> str:
    """Point BentoML's multiprocess metrics folder at this service's own and return it.
    Called when the service module is imported, before BentoML's main process creates
    (and wipes) the folder and hands it to its workers through the same variable."""
    environ = os.environ if environ is None else environ
    folder = environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        BentoMLContainer.bentoml_home.get(),
        "prometheus_multiproc_dir",
        f"{model_name}-{os.getpid()}",
    )
    BentoMLContainer.prometheus_multiproc_dir.set(folder)
    return folder


_METRICS: dict[str, Any] = {}


def service_metrics() -> dict[str, Any]:
    """Prometheus metrics, created once per process and after BentoML set up multiprocess
    collection (creating them at import would hide them from `/metrics`)."""
    if not _METRICS:
        _METRICS.update(
            model_version=Gauge(
                "loopline_model_version",
                "Version of the model being served",
                ["model", "alias"],
                multiprocess_mode="liveall",
            ),
            swaps=Counter("loopline_model_swaps", "Model loads by outcome", ["outcome"]),
            poll_errors=Counter("loopline_registry_poll_errors", "Failed alias polls"),
            mirrors_dropped=Counter(
                "loopline_mirrors_dropped",
                "Mirrored items (shadow, control) dropped: the mirror thread was behind",
                ["role"],
            ),
            predictions=Counter("loopline_predictions", "Predictions served", ["api", "version"]),
            stream_errors=Counter("loopline_stream_errors", "Rejected stream lines", ["kind"]),
            refused=Counter(
                "loopline_refused_inputs",
                "Items refused by the data contract, per rule broken (validation's names)",
                ["rule"],
            ),
            batch_size=Histogram(
                "loopline_batch_size",
                "Items per model call",
                ["api"],
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            ),
            latency=Histogram(
                "loopline_inference_seconds",
                "Features + model time per call",
                ["api"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            ),
            log_dropped=Gauge(
                "loopline_prediction_log_dropped",
                "Predictions the log could not keep",
                multiprocess_mode="liveall",
            ),
            # The monitor's latest tested period per signal (`loopline monitor`), read from
            # the monitoring table at each alias poll.
            monitor_ratio=Gauge(
                "loopline_monitor_ratio",
                "Latest monitoring period: statistic over its calibrated threshold (1 = at it)",
                ["signal", "version"],
                multiprocess_mode="liveall",
            ),
            monitor_alarm=Gauge(
                "loopline_monitor_alarm",
                "1 when the signal's latest monitoring period raised an alarm",
                ["signal", "version"],
                multiprocess_mode="liveall",
            ),
        )
    return _METRICS


def show_monitoring(metrics: dict[str, Any], log_url: str, model_name: str) -> None:
    """Set the monitor gauges from the monitoring table's latest rows (none yet: none)."""
    try:
        found = latest_signals(log_url, model_name)
    except Exception as error:  # the database may be away: the next poll tries again
        log.debug("monitoring table not read: %s", error)
        return
    for row in found:
        labels = (row["signal"], row["version"])
        metrics["monitor_ratio"].labels(*labels).set(row["ratio"])
        metrics["monitor_alarm"].labels(*labels).set(float(row["alarm"]))
