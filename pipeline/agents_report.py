"""`pairforge agents-report`: how valid and how diverse the instruction agents are.

Every caption × every task with an agent goes through the real instruction stage, twice: with the
paper's in-context protocol (exemplars shuffled, 60% kept, verbs swapped) and with the fixed
prompt (all exemplars, file order, no swaps). One try per request (no retries), so the rates are
the agents' own. Per task: valid-JSON rate, check-pass rate, reject reasons, distinct-2 of the
instructions and their mean pairwise cosine similarity under MiniLM embeddings.
Answers are cached under OUT/llm_cache, so rerunning the report replays them.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from pipeline.config import REPO_ROOT, JobConfig
from pipeline.schema import flow_table, new_flow_row, sample_id, sample_seed

PROTOCOLS = {
    "protocol": {"keep_fraction": 0.6, "shuffle_exemplars": True, "swap_verbs": True},
    "fixed": {"keep_fraction": 1.0, "shuffle_exemplars": False, "swap_verbs": False},
}
DEFAULT_CAPTIONS = REPO_ROOT / "pipeline" / "captions_eval.txt"


def _rows(captions: list[str], tasks: list[str], seed: int) -> list[dict]:
    rows = []
    for ci, cap in enumerate(captions):
        for t in tasks:
            sid = sample_id(seed, f"eval:{ci}", t, 0)
            rows.append(new_flow_row(sample_index=len(rows), id=sid, source_id=f"eval:{ci}", attempt=0, task=t,
                                     seed=sample_seed(sid), caption=cap))
    return rows


def run_protocol(cfg: JobConfig, rows: list[dict], batch: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    from pipeline.stages.instruct import InstructStage

    stage = InstructStage(cfg.model_dump(mode="json"))
    out = []
    with tqdm(total=len(rows), desc="requests", disable=not progress, unit="req") as bar:
        for i in range(0, len(rows), batch):
            out += stage(flow_table(rows[i:i + batch])).to_pylist()
            bar.update(min(batch, len(rows) - i))
    return out


def summarise(rows: list[dict]) -> dict:
    from pipeline.text_metrics import distinct_n, embed, mean_pairwise_cosine

    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    tasks, all_ins = {}, []
    for t, rs in by_task.items():
        reasons = Counter(r["reject_reason"] for r in rs if r["status"] == "rejected")
        # a transport error (timeout, connection) says nothing about the model's answers: it is
        # counted apart and left out of the rates, whose denominator is the answered requests
        errors = reasons["llm_error"]
        n = max(1, len(rs) - errors)
        parsed = n - reasons["llm_invalid_json"]
        ins = [json.loads(r["answer"])["instruction"] for r in rs if r["status"] == "pending"]
        all_ins += ins
        emb = embed(ins) if len(ins) > 1 else None
        tasks[t] = {"requests": n, "transport_errors": errors, "valid_json": round(parsed / n, 4),
                    "check_pass": round(len(ins) / n, 4),
                    "reject_reasons": dict(reasons.most_common()), "distinct_2": round(distinct_n(ins, 2), 4),
                    "mean_pairwise_cosine": round(mean_pairwise_cosine(emb), 4) if emb is not None else None}
    n = sum(t["requests"] for t in tasks.values())
    return {"requests": n, "transport_errors": sum(t["transport_errors"] for t in tasks.values()),
            "valid_json": round(sum(t["valid_json"] * t["requests"] for t in tasks.values()) / n, 4),
            "check_pass": round(sum(t["check_pass"] * t["requests"] for t in tasks.values()) / n, 4),
            "distinct_2": round(distinct_n(all_ins, 2), 4),
            "mean_task_distinct_2": round(sum(t["distinct_2"] for t in tasks.values()) / len(tasks), 4),
            "mean_task_pairwise_cosine": round(sum(t["mean_pairwise_cosine"] or 0 for t in tasks.values()) / len(tasks), 4),
            "tasks": dict(sorted(tasks.items()))}


def run_report(*, captions: list[str], tasks: list[str], out: Path, llm: dict, protocols: list[str],
               seed: int = 0, batch: int = 128, progress: bool = True) -> dict:
    from pipeline.runner import llm_server

    out.mkdir(parents=True, exist_ok=True)
    # a generous timeout and moderate concurrency: on a small machine 64 requests in flight made
    # the last ones of each batch time out (measured: 1,160 of 3,200 requests at 120 s)
    base = JobConfig.model_validate({"seed": seed, "llm": {"retries": 0, "depossess": False, "concurrency": 16,
                                                           "timeout_s": 1800, "cache_dir": str(out / "llm_cache"),
                                                           **llm}})
    rows = _rows(captions, tasks, seed)
    report = {"captions": len(captions), "tasks": tasks, "backend": base.llm.backend, "model": base.llm.model,
              "protocols": {}}
    with llm_server(base, Path(out) / "logs") as url:
        for name in protocols:
            cfg = base.model_copy(deep=True)
            for k, v in PROTOCOLS[name].items():
                setattr(cfg.llm, k, v)
            if url:
                cfg.llm.url = url
            t0 = time.time()
            got = run_protocol(cfg, [dict(r) for r in rows], batch, progress)
            s = summarise(got)
            s["seconds"] = round(time.time() - t0, 1)
            report["protocols"][name] = s
            (out / f"agents_{name}.jsonl").write_text("".join(
                json.dumps({k: r[k] for k in ("task", "caption", "status", "reject_reason", "answer", "llm")}) + "\n"
                for r in got))
    (out / "agents_report.json").write_text(json.dumps(report, indent=1))
    return report


def format_report(r: dict) -> str:
    names = list(r["protocols"])
    L = [f"{r['captions']} captions × {len(r['tasks'])} tasks, {r['backend']} / {r['model']}, one try per request", ""]
    head = f"{'task':<14}" + "".join(f"{n + ': json':>16}{'pass':>7}{'dist-2':>8}{'cos':>7}" for n in names)
    L.append(head)
    for t in r["tasks"]:
        line = f"{t:<14}"
        for n in names:
            x = r["protocols"][n]["tasks"].get(t)
            line += f"{x['valid_json']:>16.1%}{x['check_pass']:>7.1%}{x['distinct_2']:>8.3f}{(x['mean_pairwise_cosine'] or 0):>7.3f}"
        L.append(line)
    L.append("")
    for n in names:
        p = r["protocols"][n]
        L.append(f"{n:<9} answered {p['requests']} (transport errors {p['transport_errors']})  valid JSON {p['valid_json']:.1%}  check pass {p['check_pass']:.1%}  distinct-2 (all) "
                 f"{p['distinct_2']:.3f}  mean per-task distinct-2 {p['mean_task_distinct_2']:.3f}  mean per-task "
                 f"pairwise cosine {p['mean_task_pairwise_cosine']:.3f}  ({p['seconds']}s)")
    return "\n".join(L)


def main(a) -> int:
    from pipeline.cli import _parse_set
    from tasks import with_agents

    caps_path = Path(a.captions or DEFAULT_CAPTIONS)
    captions = [c.strip() for c in caps_path.read_text().splitlines() if c.strip()][: a.n]
    tasks = a.tasks.split(",") if a.tasks else with_agents()
    unknown = set(tasks) - set(with_agents())
    if unknown:
        raise SystemExit(f"--tasks: no agent for {sorted(unknown)} (agents: {', '.join(with_agents())})")
    llm = {k.removeprefix("llm."): v for k, v in _parse_set(a.set).items()}
    r = run_report(captions=captions, tasks=tasks, out=Path(a.out), llm=llm,
                   protocols=a.protocols.split(","), batch=a.batch, progress=not a.no_progress)
    print(json.dumps(r, indent=1) if a.json else format_report(r))
    return 0
