"""Quality filters. ``build_filters`` turns the job's filter config into filter instances; a new
filter is one module here plus one line below."""
from __future__ import annotations

from filters.base import Candidate, Filter, Verdict


def build_filters(cfg) -> list[Filter]:
    from filters.color_checks import ExposureFilter, VisibleChangeFilter
    return [
        VisibleChangeFilter(min_l1=cfg.min_change_l1),
        ExposureFilter(max_clipped=cfg.max_clipped_frac),
    ]


__all__ = ["Candidate", "Filter", "Verdict", "build_filters"]
