"""Quality filters. ``build_filters`` turns the job config into filter instances, loading only the
models some task of the job needs; a new filter is one module here plus a line below."""
from __future__ import annotations

from filters.base import Candidate, Filter, Verdict


def build_filters(cfg) -> list[Filter]:
    """``cfg`` is the JobConfig (filters block + model specs + task mix)."""
    from filters.clip_metrics import ClipMetricsFilter
    from filters.color_checks import ExposureFilter, VisibleChangeFilter
    from filters.depth_structure import DepthL1Filter
    from filters.min_change import MinChangeFilter

    from pipeline.models.device import resolve_device

    fc, tasks = cfg.filters, set(cfg.tasks)
    dev = resolve_device(fc.device)
    # the minimum-change floor first: its no_change is the reason a no-op candidate is reported with
    out: list[Filter] = [MinChangeFilter(fc), VisibleChangeFilter(min_l1=fc.min_change_l1), ExposureFilter(max_clipped=fc.max_clipped_frac),
                         ClipMetricsFilter(fc, clip=cfg.models.clip, dino=cfg.models.dino, device=dev)]
    if any(fc.resolved_rules(t).get("depth_l1") for t in tasks):
        out.append(DepthL1Filter(fc, depth=cfg.models.depth, device=dev))
    if fc.detector_checks and tasks & {"add", "remove", "local"}:
        from filters.detector_checks import DetectorChecks
        from pipeline.grounding.detector import build_detector
        out.append(DetectorChecks(build_detector(cfg.models.detector, cfg.grounding)))
    if fc.ocr_checks and "text" in tasks:
        from filters.ocr_checks import OcrChecks
        out.append(OcrChecks(cfg.text, gpu=dev.startswith("cuda")))
    return out


__all__ = ["Candidate", "Filter", "Verdict", "build_filters"]
