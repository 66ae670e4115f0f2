"""The service's own Prometheus metrics, beside the HTTP ones prometheus-fastapi-instrumentator
records. Labels never carry an id or note text: only fixed words."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from clem_icd.serve.batcher import PassStats

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.queue_notes = Gauge("clem_icd_queue_notes", "Notes waiting for the inference worker.",
                                 registry=registry)
        self.batch_notes = Histogram("clem_icd_batch_notes", "Notes coded per inference pass.",
                                     buckets=_BATCH_BUCKETS, registry=registry)
        self.batch_requests = Histogram("clem_icd_batch_requests", "Requests coded per inference pass.",
                                        buckets=_BATCH_BUCKETS, registry=registry)
        self.notes_coded = Counter("clem_icd_notes_coded", "Notes coded.", registry=registry)
        self.inference_seconds = Histogram("clem_icd_inference_seconds", "Seconds per inference pass.",
                                           buckets=_SECONDS_BUCKETS, registry=registry)
        self.refused = Counter("clem_icd_requests_refused", "Requests not coded, by reason.", ["reason"],
                               registry=registry)
        self.ready = Gauge("clem_icd_ready", "1 when the model is loaded and warm and the service is not "
                           "draining.", registry=registry)

    def record_pass(self, stats: PassStats) -> None:
        self.batch_notes.observe(stats.notes)
        self.batch_requests.observe(stats.requests)
        self.notes_coded.inc(stats.notes)
        self.inference_seconds.observe(stats.seconds)


class WorkbenchCollector:
    """The workbench's counts, read from the database when /metrics is scraped (so every replica
    reports the same truth): notes per status, and per model version the codes coders accepted,
    rejected and added, and the acceptance rate. Per code they are in GET /v1/work/stats and
    `clem-icd work stats`: a label per code would make thousands of series."""

    def __init__(self, stats):
        self.stats = stats  # () -> WorkStore.stats()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        stats = self.stats()
        notes = GaugeMetricFamily("clem_icd_work_notes", "Workbench notes by status.", labels=["status"])
        for status, count in stats["notes"].items():
            notes.add_metric([status], count)
        codes = GaugeMetricFamily("clem_icd_work_codes", "Codes in the notes' latest decisions, by model and "
                                  "verdict (added: the model's misses; rejected: its false alarms).",
                                  labels=["model", "model_version", "verdict"])
        rate = GaugeMetricFamily("clem_icd_work_acceptance_rate", "accepted / (accepted + rejected) of the "
                                 "suggestions coders judged, by model.", labels=["model", "model_version"])
        for model in stats["models"]:
            labels = [model["model_name"], model["model_version"]]
            for verdict in ("accepted", "rejected", "added"):
                codes.add_metric([*labels, verdict], model[verdict])
            if model["acceptance_rate"] is not None:
                rate.add_metric(labels, model["acceptance_rate"])
        yield from (notes, codes, rate)
