"""The per-task funnel: how many samples reached each stage and how many came out of it still alive.

A row's ``stage_times`` lists exactly the stages that worked on it (pipeline/stages/base.py stamps
only the rows a stage processed), and ``reject_stage`` names where it died, so both numbers come
from the row alone:

    reached(S)  = rows with an entry for S
    rejected(S) = rows rejected by S
    survived(S) = reached(S) − rejected(S)

"source" (the planner: unknown task, unusable source row) comes first and every row reaches it.
Stages a task never uses (a color task has no diffusion) do not appear in its funnel. Counters
only: memory grows with tasks × stages, never with rows.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

SOURCE = "source"
COLUMNS = ["task", "status", "reject_stage", "stage_times"]


def stage_order() -> list[str]:
    """The stages in chain order, for a stable display (unknown names go last, by name)."""
    from pipeline.stages import CHAIN
    return [SOURCE] + [s.name for s in CHAIN]


class Funnel:
    """Streaming accumulator: ``add(row)`` per shard row, ``result()`` at the end."""

    def __init__(self):
        self.reached: dict[str, Counter] = defaultdict(Counter)
        self.rejected: dict[str, Counter] = defaultdict(Counter)
        self.accepted: Counter = Counter()

    def add(self, r: dict) -> None:
        task = r["task"]
        self.reached[task][SOURCE] += 1
        for e in r.get("stage_times") or ():
            self.reached[task][e["stage"]] += 1
        if r["status"] == "rejected":
            self.rejected[task][r["reject_stage"] or "?"] += 1
        else:
            self.accepted[task] += 1

    def result(self) -> dict[str, list[dict]]:
        order = {s: i for i, s in enumerate(stage_order())}
        out = {}
        for task in sorted(self.reached):
            seen = set(self.reached[task]) | set(self.rejected[task])
            rows = []
            for s in sorted(seen, key=lambda s: (order.get(s, len(order)), s)):
                if s == "llm_server":           # not a stage rows pass through; the instruct stage's twin
                    continue
                reached, rejected = self.reached[task][s], self.rejected[task][s]
                rows.append({"stage": s, "reached": reached, "rejected": rejected, "survived": reached - rejected})
            out[task] = rows
        return out


def funnel(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Per task, in chain order: [{stage, reached, rejected, survived}, ...]. ``rows`` need the
    columns in COLUMNS (e.g. ``pipeline.stats.iter_rows(store, path, COLUMNS)`` per shard file)."""
    f = Funnel()
    for r in rows:
        f.add(r)
    return f.result()


def format_funnel(fun: dict[str, list[dict]]) -> list[str]:
    """Text lines: one per task, stage:reached→survived, ending with the accepted count."""
    L = []
    for task, rows in fun.items():
        steps = "  ".join(f"{r['stage']} {r['reached']}→{r['survived']}" for r in rows)
        L.append(f"  {task:<12} {steps}")
    return L
