"""GET /metrics in the Prometheus text format (prometheus-client).

Totals and gauges are read from the shared store at scrape time (`SharedTotals`, a custom collector): on Modal a
scrape reaches any one of several web containers, and each answers with the same deployment-wide figures. Only
the request latency histogram is kept in this process's memory: it describes the web container that answered.
A scrape costs two store calls: the totals document and the queue depth (which Modal's store caches for a
second per container).
"""

from typing import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from service.jobs import tallies
from service.jobs.service import JobService

METHODS = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"}  # others: "other" (bounded labels)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _histogram(name: str, documentation: str, bounds: tuple, stored: dict | None) -> HistogramMetricFamily:
    """A histogram family from counts per bucket as tallies keeps them (not cumulative; the last is +Inf)."""
    counts = (stored or {}).get("counts") or [0] * (len(bounds) + 1)
    cumulative, running = [], 0
    for bound, count in zip([*map(str, map(float, bounds)), "+Inf"], counts):
        running += count
        cumulative.append((bound, running))
    return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=(stored or {}).get("sum", 0.0))


class SharedTotals:
    """A prometheus_client collector over the deployment's totals in the Counters store."""

    def __init__(self, jobs: JobService):
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        totals = tallies.read(self.jobs.counters)
        jobs = CounterMetricFamily("inpaint_jobs", "Jobs ended, by final status and failure kind.",
                                   labels=["status", "failure"])
        for kind, count in sorted(totals.get("jobs", {}).items()):
            status, _, failure = kind.partition(":")
            jobs.add_metric([status, failure], count)
        yield jobs
        yield GaugeMetricFamily("inpaint_queue_depth", "Jobs queued or running.",
                                value=self.jobs.records.unfinished())
        yield _histogram("inpaint_inference_seconds", "Seconds of each job's pipeline call (a batch's call, for "
                         "jobs that ran in one).", tallies.INFERENCE_BUCKETS, totals.get("inference"))
        yield _histogram("inpaint_batch_size", "Jobs by the number of jobs in the pipeline call they ran in.",
                         tallies.BATCH_BUCKETS, totals.get("batch"))
        yield _histogram("inpaint_mask_seconds", "Seconds the mask model took to find each mask_prompt's mask.",
                         tallies.MASK_BUCKETS, totals.get("mask"))
        yield CounterMetricFamily("inpaint_gpu_seconds", "GPU seconds used by jobs (metrics.gpu_seconds).",
                                  value=totals.get("gpu_seconds", 0.0))
        yield CounterMetricFamily("inpaint_cost_usd", "USD the priced jobs cost (metrics.cost_usd); stays 0 "
                                  "without a GPU type.", value=totals.get("cost_usd", 0.0))
        refused = CounterMetricFamily("inpaint_requests_refused", "Submissions refused: credits (406, the key's "
                                      "budget is used up) and spend_cap (429, the day's spend cap).",
                                      labels=["reason"])
        for reason in ("credits", "spend_cap"):
            refused.add_metric([reason], totals.get("refused", {}).get(reason, 0))
        yield refused
        yield CounterMetricFamily("inpaint_cold_start_jobs", "Jobs that waited for a model load (the first jobs "
                                  "of a new worker or GPU container).", value=totals.get("cold_start_jobs", 0))
        yield from self._spend(totals)

    def _spend(self, totals: dict) -> Iterator[Metric]:
        yield GaugeMetricFamily("inpaint_spend_today_usd", "USD the priced jobs that ended this UTC day cost.",
                                value=tallies.spend_on(totals, tallies.day_of(self.jobs.admission.clock())))
        cap = self.jobs.settings.spend_cap_usd_per_day
        if cap is not None:
            yield GaugeMetricFamily("inpaint_spend_cap_usd_per_day", "SPEND_CAP_USD_PER_DAY: new jobs are "
                                    "refused for the rest of the UTC day once the day's spend reaches it.", value=cap)


class Metrics:
    """One app's registry: the shared totals and this process's request latency."""

    def __init__(self, jobs: JobService):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SharedTotals(jobs))
        self.latency = Histogram("inpaint_request_duration_seconds", "Seconds from a request's arrival to its "
                                 "answer, in the web process that answered (per container on Modal).",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, scope: dict, status: int, seconds: float) -> None:
        """One answered request; the route is the matched path template, so ids do not make new series."""
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"] if scope["method"] in METHODS else "other"
        self.latency.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        """The text exposition (blocking: it reads the store)."""
        return generate_latest(self.registry)
