"""The `pairforge` command."""
from __future__ import annotations

import argparse
import json
import logging
import sys

EPILOG = """examples:
  pairforge run deploy/profiles/local.yaml --out out/demo     # embedded Ray + vLLM on this machine
  pairforge plan JOB.yaml --cluster deploy/ray-cluster.yaml   # dry run: actor pools vs the cluster, exit 1 if too big
  ray job submit --working-dir . -- pairforge run JOB.yaml    # the same job on a Ray cluster
  pairforge stats out/demo [--json]                           # what the job produced
  pairforge verify out/demo                                   # schema, counts, checksums
  pairforge stats out/demo --html report.html                 # funnel, score histograms, pairs, candidates
  pairforge export-preference out/demo pref.parquet           # DPO pairs (needs output.keep_candidates: all)
  pairforge cost out/demo --target 1000000 --hours 48         # GPU/CPU-hours, $ per 1M pairs, cluster plan
  pairforge bench deploy/profiles/local.yaml                  # per-stage throughput, efficiency, memory
  pairforge bench --scale 10000 100000 1000000 --json         # how driver memory, throughput and commits scale
  pairforge agents-report -n 200                              # instruction validity and diversity
  pairforge predict-task "get rid of the car"                 # which task an instruction asks for
  pairforge train --shards out/demo --out runs/demo           # fit the editing model on the shards
  pairforge edit photo.png "make it brighter" --checkpoint runs/demo/final
  pairforge eval --checkpoint runs/demo/final --shards out/demo   # CLIP/L1/DINO on held-out rows
"""


def _parse_set(items: list[str]) -> dict:
    import yaml
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_run(a) -> int:
    from pipeline.config import ConfigError, JobError, describe_fields, load_job
    from pipeline.runner import run_job
    from pipeline.stats import compute_stats, format_stats

    if a.help_config:
        print("\n".join(describe_fields()))
        return 0
    if not a.job:
        raise SystemExit("pairforge run: a job file is required (see --help)")
    try:
        cfg = load_job(a.job, _parse_set(a.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or cfg.output.path            # a path or a URI (s3://…): never through Path
    from pipeline.runner import JobStopped
    try:
        summary = run_job(cfg, out, progress=not a.no_progress, quiet_logs=not a.verbose)
    except JobStopped as e:       # a server, the GPU or storage failed for longer than the retries
        print(f"error: {e}", file=sys.stderr)
        return 3
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if not a.quiet:
        print(format_stats(compute_stats(out)))
    from pipeline.console import closing_summary
    sys.stdout.flush()
    print(closing_summary(summary), file=sys.stderr)
    return 0


def cmd_plan(a) -> int:
    import os

    from pipeline import resources as R
    from pipeline.config import ConfigError, load_job

    try:
        cfg = load_job(a.job, _parse_set(a.set))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        n_samples, n_shards, tasks = R.count_samples(cfg)
    except (OSError, ValueError) as e:
        # planning on a laptop for a cluster whose source lives on shared storage: pools still count
        print(f"note: samples not counted: {e}", file=sys.stderr)
        n_samples = n_shards = None
        tasks = set(cfg.tasks)
    pools = R.pool_specs(cfg, tasks)
    address = a.address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
    problems = against = None
    try:
        if a.cluster:
            nodes = R.launcher_nodes(a.cluster)
            against = f"{a.cluster} at its largest ({R.describe_nodes(nodes)})"
        elif address:
            nodes = R.ray_nodes(address)
            against = (f"the running cluster at {address} ({R.describe_nodes(nodes)} now; an autoscaler "
                       "may add more: check its launcher config with --cluster)")
        if against:
            problems = R.check_fits(pools, nodes)
    except Exception as e:        # unreadable launcher YAML, unreachable cluster: say which, exit 2
        print(f"error: {a.cluster or address}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    measured = None
    if a.measured:
        from pipeline import cost as C
        try:
            meas = C.measure(a.measured)
            # the job file's pools say what an actor holds; the measured output how long a sample takes
            held = {p.stage: (p.num_cpus, p.num_gpus) for p in pools}
            held[C.SERVER] = (cfg.stages.llm_server.num_cpus, cfg.stages.llm_server.num_gpus)
            measured = C.cluster_plan(meas, samples=None if a.target else n_samples, target=a.target,
                                      hours=a.hours, utilization=a.utilization, held=held)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: --measured {a.measured}: {e}", file=sys.stderr)
            return 2
    if a.json:
        out = R.plan_json(cfg, n_samples, n_shards, pools, problems, against)
        if measured:
            out["measured_plan"] = measured
        print(json.dumps(out, indent=1))
    else:
        print(R.format_plan(cfg, n_samples, n_shards, pools, problems, against))
        if measured:
            from pipeline.cost import format_cluster_plan
            print("\n" + format_cluster_plan(measured, f"pools this job needs at the speed measured in {a.measured}"))
    return 1 if problems else 0


def cmd_stats(a) -> int:
    from pipeline.stats import compute_stats, format_stats
    try:
        s = compute_stats(a.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=1) if a.json else format_stats(s))
    if a.html:
        from pipeline.report_html import write_html
        print(f"HTML report: {write_html(a.out, a.html)}", file=sys.stderr)
    return 0


def cmd_export_preference(a) -> int:
    from pipeline.preference import export_preference
    try:
        c = export_preference(a.out, a.dest, score=a.score, pairs=a.pairs, min_margin=a.min_margin,
                              row_group=a.row_group)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(c, indent=1))
    if not c["pairs"]:
        print(f"error: no preference pairs in {a.out}, {a.dest} not written: were the job's candidates "
              "kept (output.keep_candidates: all) and did a multi-candidate task accept samples?", file=sys.stderr)
        return 1
    return 0


def cmd_cost(a) -> int:
    from pipeline import cost as C
    try:
        prices = C.parse_prices(a.price)
        meas = C.measure(a.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = C.cost_report(meas, prices)
    rep["run_limiter"] = C.run_limiter(meas, C.run_pools(a.out))
    if a.target or a.hours:
        try:
            rep["cluster_plan"] = C.cluster_plan(meas, target=a.target or 1_000_000, hours=a.hours or 48,
                                                 utilization=a.utilization)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if a.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(C.format_cost(rep))
    lim = rep["run_limiter"]
    if lim:
        print(f"\nthis run's throughput limiter: {lim['stage']} (busy {lim['busy_s_per_actor']:.1f} s per actor, "
              f"{lim['actors']} actor(s); the busiest pool bounds the chain)")
    if "cluster_plan" in rep:
        print("\n" + C.format_cluster_plan(rep["cluster_plan"], f"cluster plan for {a.target or 1_000_000:,} accepted pairs"))
    return 0


def cmd_verify(a) -> int:
    from pipeline.verify import verify
    problems = verify(a.out)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"{a.out}: {len(problems)} problem(s)")
        return 1
    print(f"{a.out}: OK")
    return 0


def cmd_bench(a) -> int:
    if a.scale:
        from pipeline.bench_scale import format_table, run
        results = run(a.scale, rows_per_shard=a.rows_per_shard, keep=a.out,
                      progress=lambda line: print(line, file=sys.stderr))
        if a.json:                       # one JSON object per N, one per line
            for r in results:
                print(json.dumps(r))
        else:
            print(format_table(results))
        return 0
    if not a.job:
        raise SystemExit("pairforge bench: a job file, or --scale N, is required (see --help)")
    from pipeline.bench import main as bench_main
    return bench_main(a)


def _labelled_rows(src: str) -> list[dict]:
    """(task, instruction) rows from a .jsonl file, an agents-report folder or a job output folder."""
    from filters.task_predictor import load_training_rows
    from filters.train_task_predictor import read_jsonl

    return read_jsonl(src) if src.endswith(".jsonl") else load_training_rows([src])


def cmd_task_predictor(a) -> int:
    if a.eval:
        return _eval_task_predictor(a)
    if a.kind == "minilm-logreg":
        return _train_logreg(a)
    return _train_finetuned(a)


def _eval_task_predictor(a) -> int:
    from filters.task_predictor import load_task_predictor
    from filters.train_task_predictor import evaluate, format_evaluation

    predictor = load_task_predictor(a.model, a.sha256)
    out = {}
    for src in a.eval:
        rows = _labelled_rows(src)
        if not rows:
            print(f"no labelled instructions in {src}", file=sys.stderr)
            return 2
        rep = evaluate(predictor, rows)
        out[src] = rep
        if not a.json:
            print(format_evaluation(rep, f"{src} ({a.model or 'shipped model'}): "))
            if a.errors:
                print("\n".join(f"  {e['task']:>12} → {e['predicted']:<12} p={e['p']:.2f}  {e['instruction']}"
                                 for e in rep["errors"]))
            print()
    if a.json:
        print(json.dumps(out if a.errors else {k: {x: y for x, y in v.items() if x != "errors"} for k, v in out.items()},
                         indent=1))
    return 0


def _train_finetuned(a) -> int:
    import time
    from pathlib import Path

    import numpy as np

    from filters.task_predictor import FineTunedTaskPredictor
    from pipeline.config import REPO_ROOT
    from filters.train_task_predictor import HELDOUT_FILE, evaluate, format_evaluation, human_rows, read_jsonl, train
    from tasks import with_agents

    rows, pipeline_test = human_rows(), []
    if a.sources:
        # the pipeline's instructions join the training set, split by caption so that the held-out
        # part shares no caption with what was trained on
        from filters.task_predictor import load_training_rows
        own = load_training_rows(a.sources)
        caps = sorted({r["caption"] for r in own})
        held = set(np.random.default_rng(0).permutation(caps)[:int(round(a.holdout * len(caps)))].tolist())
        rows += [r for r in own if r["caption"] not in held]
        pipeline_test = [r for r in own if r["caption"] in held]
    t0 = time.time()
    model = train(rows, sorted(with_agents()), trainable_layers=a.layers, epochs=a.epochs, seed=a.seed)
    seconds = round(time.time() - t0, 1)
    out = Path(a.out) if Path(a.out).is_absolute() else REPO_ROOT / a.out     # where load() looks for it
    digest = model.save(out)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    predictor = FineTunedTaskPredictor.load(out)          # what ships: the fp16 layers, checksum checked
    report = {"train_rows": len(rows), "train_seconds": seconds, "saved": str(out), "sha256": digest,
              "bytes": out.stat().st_size, "heldout": evaluate(predictor, read_jsonl(HELDOUT_FILE))}
    if pipeline_test:
        report["pipeline_heldout"] = evaluate(predictor, pipeline_test)
    if a.json:
        print(json.dumps({k: ({x: y for x, y in v.items() if x != "errors"} if isinstance(v, dict) else v)
                          for k, v in report.items()}, indent=1))
    else:
        print(f"trained on {len(rows)} instructions in {seconds}s; saved {out} ({report['bytes'] / 1e6:.1f} MB, "
              f"sha256 {digest[:16]}…, recorded in {out.name}.sha256)\n")
        print(format_evaluation(report["heldout"], f"{HELDOUT_FILE.relative_to(REPO_ROOT)}: "))
        if pipeline_test:
            print("\n" + format_evaluation(report["pipeline_heldout"], "pipeline instructions of held-out captions: "))
    return 0


def _train_logreg(a) -> int:
    from filters.task_predictor import load_training_rows, train_and_evaluate

    if not a.sources:
        raise SystemExit("pairforge task-predictor --kind minilm-logreg: --from DIR is required")
    rows = load_training_rows(a.sources)
    if not rows:
        print(f"no instructions found in {a.sources}", file=sys.stderr)
        return 2
    out = a.out if a.out.endswith(".npz") else "filters/data/task_predictor_minilm.npz"
    model, rep = train_and_evaluate(rows, holdout=a.holdout)
    model.save(out)
    rep["saved"] = out
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"trained on {rep['train']} instructions, held out {rep['heldout']} "
              f"({rep['heldout_captions']} captions): accuracy {rep['accuracy']:.1%}")
        print("per task: " + ", ".join(f"{t} {v:.0%}" for t, v in rep["per_task"].items()))
        print("top confusions: " + ", ".join(f"{k}×{v}" for k, v in rep["top_confusions"].items()))
        print(f"final model (all {len(rows)} instructions) saved to {out}")
    return 0


def cmd_predict_task(a) -> int:
    from filters.task_predictor import load_task_predictor

    texts = list(a.instructions)
    if texts == ["-"]:
        texts = [line.strip() for line in sys.stdin if line.strip()]
    elif "-" in texts:
        raise SystemExit("pairforge predict-task: '-' (read stdin) cannot be mixed with instructions")
    if not texts:
        raise SystemExit("pairforge predict-task: no instructions given")
    predictor = load_task_predictor(a.model, a.sha256)
    for ins in texts:            # one by one: a long stdin starts printing at once
        p, order = predictor.predict_proba([ins])
        i = int(p[0].argmax())
        row = {"instruction": ins, "task": order[i], "p": round(float(p[0, i]), 4)}
        if a.top > 1:
            row["top"] = [[order[j], round(float(p[0, j]), 4)] for j in p[0].argsort()[::-1][:a.top]]
        print(json.dumps(row), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pairforge", description="Generate instruction-based image-editing "
                                "training pairs on Ray (Emu Edit data pipeline).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; for run: Ray's and the actors' output on the terminal too (default: OUT/logs/)")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a generation job (embedded Ray, or the cluster under `ray job submit`)",
                       epilog="exit status: 0 done; 2 bad job file or setup; 3 stopped because a server, the GPU or "
                       "storage failed for longer than the retries (llm.wait_s, retry.*): what was whole is "
                       "committed, rerun the same command to make the rest", formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("job", nargs="?", help="job YAML (see deploy/profiles/)")
    r.add_argument("--out", help="output folder; overrides output.path of the job file")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set source.limit=4 --set llm.url=http://h:8000/v1")
    r.add_argument("--no-progress", action="store_true", help="no progress display (one per pass: samples, "
                   "accepted, rejected, shards, LLM server health)")
    r.add_argument("-q", "--quiet", action="store_true", help="do not print statistics at the end")
    r.add_argument("--help-config", action="store_true", help="list every job-file field with its description")
    r.set_defaults(fn=cmd_run)

    pl = sub.add_parser(
        "plan", help="dry run: the job's actor pools and what they need of a cluster; exit 1 if they do not fit",
        description="Dry run: load the job file, count its samples and shards from the source index (no\n"
        "image read, no Ray started, no LLM) and print one row per actor pool the run would start: actors,\n"
        "CPUs, GPUs and memory per actor, batch size, totals.\n\n"
        "Ray Data places every actor of a pool before the pool works, so a pool the cluster cannot hold\n"
        "does not fail: the job waits forever. The check turns that into an error naming the field to change.\n"
        "It checks against --cluster (a Ray cluster launcher YAML at its max_workers), else --address,\n"
        "RAY_ADDRESS or the job's ray.address (a running cluster's nodes now), else prints only the needs.\n\n"
        "exit status: 0 fits (or nothing to check against); 1 does not fit; 2 bad job file, launcher\n"
        "file or address.", epilog="examples:\n"
        "  pairforge plan deploy/profiles/paper.yaml --cluster deploy/ray-cluster.yaml\n"
        "  pairforge plan JOB.yaml --set stages.diffusion_edit.actors=32 --address http://HEAD:8265\n"
        "  pairforge plan deploy/profiles/local.yaml --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("job", help="job YAML (see deploy/profiles/)")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config field, e.g. --set stages.diffusion_edit.actors=16")
    pl.add_argument("--cluster", metavar="LAUNCHER.yaml",
                    help="check against the most nodes this Ray cluster launcher config can start "
                    "(e.g. deploy/ray-cluster.yaml; node types must declare CPU, GPU and memory)")
    pl.add_argument("--address", help="check against a running cluster's alive nodes: http://HEAD:8265 "
                    "or HOST:6379 (default: RAY_ADDRESS, then ray.address of the job)")
    pl.add_argument("--json", action="store_true", help="one JSON object: samples, shards, pools, "
                    "requirements, against, fits, problems (and measured_plan)")
    pl.add_argument("--measured", metavar="OUT", help="an output of a measured run (e.g. a few hundred samples "
                    "of this job on the target hardware): also size every pool from its stage times for "
                    "this job's samples (or --target) in --hours; the same model as `pairforge cost`")
    pl.add_argument("--target", type=int, metavar="PAIRS", help="with --measured: accepted pairs to plan for "
                    "instead of the job's sample count")
    pl.add_argument("--hours", type=float, default=48, help="with --measured: wall-clock hours (default 48)")
    pl.add_argument("--utilization", type=float, default=0.8, help="with --measured: fraction of the time "
                    "actors are busy (default 0.8)")
    pl.set_defaults(fn=cmd_plan)

    s = sub.add_parser("stats", help="per-task counts, acceptance, reject reasons, scores and parameters")
    s.add_argument("out", help="output folder of a job")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--html", metavar="FILE", help="also write one self-contained HTML page: the funnel per task, "
                   "score histograms with their thresholds, a sample of pairs with masks, candidate strips, and "
                   "reject reasons linked to examples (reads a fixed-size sample, never the whole job)")
    s.set_defaults(fn=cmd_stats)

    ep = sub.add_parser(
        "export-preference", help="DPO-ready Parquet: input image, instruction, chosen and rejected output, scores, margin",
        description="Pairs the kept candidate of every accepted sample with the candidates the job did not keep "
        "(OUT/candidates/, written when output.keep_candidates is all). The judge score decides when the "
        "candidates have one, else the job's filters.select_by (a candidate that passed the filters beats one "
        "that did not). Streams shard by shard; OUT and DEST may be object-store URIs. "
        "Opens with datasets.load_dataset('parquet', data_files=DEST).")
    ep.add_argument("out", help="output folder of a job")
    ep.add_argument("dest", help="Parquet file to write (path or URI)")
    ep.add_argument("--score", default="auto", help="auto (judge when present, else the filter's select_by), "
                    "judge, or a filter score: clip_dir, clip_img, clip_out, dino, depth_l1, l1")
    ep.add_argument("--pairs", choices=["all", "worst"], default="all",
                    help="all: the best candidate against each one ranked below it; worst: only the lowest-ranked")
    ep.add_argument("--min-margin", type=float, default=0.0,
                    help="leave out pairs whose score margin is not above this (unless only the chosen one "
                    "passed the filters)")
    ep.add_argument("--row-group", type=int, default=64, help="rows per Parquet row group (memory bound)")
    ep.set_defaults(fn=cmd_export_preference)

    c = sub.add_parser(
        "cost", help="GPU-hours, CPU-hours and money per 1M accepted pairs per task, the bottleneck stage; "
        "with --target/--hours a cluster plan",
        description="Cost of a finished output from the stage times every row carries (stage_times: per\n"
        "stage the row reached, its share of the batch's wall time and the CPU/GPU seconds that share held,\n"
        "i.e. the pool's declared num_cpus/num_gpus × wall). Rejected rows count: they used the stages\n"
        "before the one that dropped them.\n\n"
        "The vLLM server's share (llm_server) is the instruct stage's wall share / instruct actors (the\n"
        "actors share the server's batches) times stages.llm_server.num_cpus/num_gpus: exact for a busy\n"
        "server; an idle server's time is in no row.\n\n"
        "bottleneck: the stage with the most money per accepted pair (GPU and CPU seconds at --price):\n"
        "where the hardware is bought, so where a faster model or a better acceptance upstream pays most.\n"
        "throughput limiter of the run: the pool with the most busy seconds per actor; it bounded this\n"
        "run's speed (the cluster plan sizes every pool to the same throughput).\n\n"
        "cluster plan: per stage, actors = measured wall-seconds per sample × samples needed for --target\n"
        "accepted pairs (at the measured acceptance and task mix) / (--hours × 3600 × --utilization).\n"
        "It assumes the measured per-actor speed: measure on the hardware you plan for.\n"
        "Not counted: model loading, planner, writers, compaction (see `pairforge bench`).",
        epilog="examples:\n  pairforge cost out/demo\n  pairforge cost out/demo --price gpu=2.5 --price cpu=0.04\n"
        "  pairforge cost out/demo --target 1000000 --hours 48\n"
        "  pairforge plan deploy/profiles/paper.yaml --measured out/pilot --hours 48",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("out", help="output folder of a job")
    c.add_argument("--price", action="append", metavar="gpu=$|cpu=$",
                   help="dollars per GPU-hour / CPU-hour (default gpu=2.5, cpu=0.04)")
    c.add_argument("--target", type=int, metavar="PAIRS", help="print a cluster plan for this many accepted pairs "
                   "(default 1000000 when --hours is given)")
    c.add_argument("--hours", type=float, help="wall-clock hours for the cluster plan (default 48 when --target is given)")
    c.add_argument("--utilization", type=float, default=0.8, help="fraction of the time actors are busy in the "
                   "plan (default 0.8)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(fn=cmd_cost)

    v = sub.add_parser("verify", help="check schema, counts and checksums; exit 1 on any problem")
    v.add_argument("out", help="output folder of a job")
    v.set_defaults(fn=cmd_verify)

    b = sub.add_parser("bench", help="per-stage throughput, pipeline efficiency and peak memory of a job; "
                       "or, with --scale, how the data plane's cost grows with the job size",
                       description="With a job file: each stage alone, then the chain. With --scale N [N ...]: "
                       "one job per N of synthetic captions through the real planner, Ray chain, writers and "
                       "commits (the LLM and the generators replaced by stand-ins, which no job file can select), "
                       "then stats and verify; driver peak RSS, samples/s and commit time per shard side by side.")
    b.add_argument("job", nargs="?", help="job YAML (not with --scale)")
    b.add_argument("--scale", type=int, nargs="+", metavar="N", help="sample counts, e.g. --scale 10000 100000 1000000")
    b.add_argument("--rows-per-shard", type=int, default=64, help="with --scale: samples per shard (default 64)")
    b.add_argument("--out", default=None, help="scratch folder (default: a temporary one, deleted after --scale)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(fn=cmd_bench)

    g = sub.add_parser("agents-report", help="validity and diversity of the instruction agents, with and "
                       "without the shuffle/60%%/verb-swap protocol, through the real LLM stage")
    g.add_argument("--captions", help="caption file, one per line (default: pipeline/captions_eval.txt)")
    g.add_argument("-n", type=int, default=200, help="number of captions (default 200)")
    g.add_argument("--tasks", help="comma-separated tasks (default: every task with an agent)")
    g.add_argument("--protocols", default="protocol,fixed", help="protocol,fixed (default both)")
    g.add_argument("--out", default="out/agents-report", help="report folder (answers cached there)")
    g.add_argument("--set", action="append", metavar="llm.KEY=VALUE",
                   help="LLM settings, e.g. --set llm.url=http://host:8000/v1 --set llm.backend=transformers")
    g.add_argument("--batch", type=int, default=128, help="requests per stage call")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--json", action="store_true")
    g.set_defaults(fn=lambda a: __import__("pipeline.agents_report", fromlist=["main"]).main(a))

    tp = sub.add_parser(
        "task-predictor", help="train the task predictor (MiniLM fine-tuned on human-style instructions) and "
        "report its held-out accuracy, or --eval a trained one",
        description="Train: fine-tune all-MiniLM-L6-v2's last two layers and a head on\n"
        "filters/data/task_instructions/train.jsonl and the prompt files' exemplars (plus, with --from,\n"
        "the pipeline's own instructions), write the weights and FILE.sha256, and report accuracy, per-task\n"
        "accuracy and the confusion table on filters/data/task_instructions/heldout.jsonl (never trained on).\n"
        "--kind minilm-logreg trains the earlier logistic regression on --from folders instead.\n\n"
        "Evaluate: --eval FILE|DIR scores a trained model (default: the shipped one; --model to choose)\n"
        "on labelled instructions: a .jsonl of {task, instruction}, an agents-report folder or a job folder.",
        epilog="examples:\n"
        "  pairforge task-predictor --eval filters/data/task_instructions/heldout.jsonl\n"
        "  pairforge task-predictor --eval filters/data/task_instructions/heldout.jsonl "
        "--model filters/data/task_predictor_minilm.npz\n"
        "  pairforge task-predictor --eval out/agents-report --errors      # SmolLM2's own instructions\n"
        "  pairforge task-predictor                                        # retrain the shipped model\n"
        "  pairforge task-predictor --from out/agents-report --out models/tp.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tp.add_argument("--from", dest="sources", action="append", metavar="DIR",
                    help="an agents-report folder (agents_*.jsonl) or a job output folder whose instructions join "
                    "the training set (20%% of their captions held out and reported); repeatable")
    tp.add_argument("--kind", choices=["minilm-finetuned", "minilm-logreg"], default="minilm-finetuned")
    tp.add_argument("--out", default="filters/data/task_predictor_minilm_ft.safetensors",
                    help="weights file to write (minilm-logreg: an .npz, default filters/data/task_predictor_minilm.npz)")
    tp.add_argument("--epochs", type=int, default=10, help="minilm-finetuned: passes over the data (default 10)")
    tp.add_argument("--layers", type=int, default=2, help="minilm-finetuned: transformer layers trained, from "
                    "the top (default 2; each adds 1.8 MB to the file)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--holdout", type=float, default=0.2, help="fraction of --from captions held out for the accuracy")
    tp.add_argument("--eval", action="append", metavar="FILE|DIR", help="only evaluate: labelled instructions "
                    "(.jsonl of {task, instruction}, agents-report or job folder); repeatable")
    tp.add_argument("--model", help="with --eval: weights file (.safetensors fine-tuned, .npz logreg; default the "
                    "shipped fine-tuned model)")
    tp.add_argument("--sha256", help="with --eval: expected sha256 of --model (default: FILE.sha256 beside it)")
    tp.add_argument("--errors", action="store_true", help="with --eval: list every misread instruction")
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(fn=cmd_task_predictor)

    pt = sub.add_parser(
        "predict-task", help="which of the sixteen tasks an instruction asks for: one JSON line per instruction",
        description="Print {\"instruction\", \"task\", \"p\"} as one JSON line per instruction: the task the task\n"
        "predictor reads and its probability. Instructions come as arguments, or one per line on stdin with '-'.",
        epilog="examples:\n"
        "  pairforge predict-task \"get rid of the car\" \"make it look like a van gogh\"\n"
        "  cut -f2 instructions.tsv | pairforge predict-task - > predicted.jsonl\n"
        "  pairforge predict-task --model filters/data/task_predictor_minilm.npz \"edges only\"   # the older model",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pt.add_argument("instructions", nargs="+", metavar="INSTRUCTION", help="instruction text, or - to read one per line from stdin")
    pt.add_argument("--model", help="weights file (.safetensors fine-tuned, .npz logreg; default the shipped fine-tuned model)")
    pt.add_argument("--sha256", help="expected sha256 of --model (default: FILE.sha256 beside it)")
    pt.add_argument("--top", type=int, default=1, help="also list the N most likely tasks with their probabilities")
    pt.set_defaults(fn=cmd_predict_task)

    from trainer.cli import add_subcommands   # train, edit, eval (the editing model)
    add_subcommands(sub)

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
