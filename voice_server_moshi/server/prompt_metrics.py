"""The persona prompt cache's and prefills' metric families (PersonaPlex, ADR 0130), torch-
free: ``serve``'s ``/metrics`` and the cluster ingress's (labelled per replica) share them."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["PROMPT_METRICS"]


#: The prompt cache's and prefills' metrics (PersonaPlex, ADR 0130): name, family, help,
#: :class:`~..engine.metrics.PromptMetrics` attribute. The cluster labels them per replica.
PROMPT_METRICS: tuple[tuple[str, type[CounterMetricFamily] | type[GaugeMetricFamily], str,
                            str], ...] = (
    ("moshi_engine_prompt_cache_hits", CounterMetricFamily,
     "Calls whose prompt came from the cache.", "hits"),
    ("moshi_engine_prompt_cache_misses", CounterMetricFamily,
     "Calls whose prompt was prefilled.", "misses"),
    ("moshi_engine_prompt_cache_evictions", CounterMetricFamily,
     "Prompts evicted (LRU by bytes).", "evictions"),
    ("moshi_engine_prompt_cache_entries", GaugeMetricFamily, "Prompts kept.", "entries"),
    ("moshi_engine_prompt_cache_bytes", GaugeMetricFamily, "Bytes of prompt state kept.",
     "bytes"),
    ("moshi_engine_prompt_prefills", CounterMetricFamily, "Prompt prefills run to the end.",
     "prefills"),
    ("moshi_engine_prompt_prefill_steps", CounterMetricFamily, "LM steps of prompt prefills.",
     "prefill_steps"),
    ("moshi_engine_prompt_prefill_seconds", CounterMetricFamily,
     "LM time of prompt prefills.", "prefill_seconds"),
    ("moshi_engine_prompts_prefilling", GaugeMetricFamily,
     "Calls whose prompt is prefilling now.", "prefilling"),
)
