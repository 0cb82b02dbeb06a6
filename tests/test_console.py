"""The calm console (pipeline/console.py) without Ray: what is written to fd 2 while a job runs
lands in OUT/logs/ray.log, the actors' forwarded lines in ray_workers.log, our own lines and the
progress display on the terminal. tests/test_job.py checks a real job's console."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from pipeline.console import RAY_LOG, WORKER_LOG, Console, closing_summary


def test_fd2_and_worker_lines_go_to_logs_our_lines_to_the_console(tmp_path):
    # a child process, so its fd 2 is ours to redirect and capture from outside
    code = textwrap.dedent(f"""
        import logging, os, subprocess, sys
        logging.basicConfig(level=logging.INFO)
        from pipeline.console import Console
        with Console({str(tmp_path)!r}) as c:
            os.write(2, b"[core_worker.cc:2465] C++ line\\n")                  # what Ray's core writes
            print("WARNING streaming_executor -- python line", file=sys.stderr)
            subprocess.run([sys.executable, "-c", "import sys; print('child of the job', file=sys.stderr)"])
            logging.getLogger("pairforge").info("our milestone")
            c._worker_lines({{"pid": 42, "actor_name": "MapWorker(FilterStage)", "lines": ["WARNING filter: slow", "ok"]}})
            c._worker_lines({{"pid": "autoscaler", "lines": ["Resources", "---", "Usage: 1/2 CPU"]}})
            c._worker_lines({{"pid": "raylet", "lines": ["(raylet) 2 Workers killed due to memory pressure (OOM)"]}})
            c._worker_lines({{"pid": 43, "actor_name": "MapWorker(InstructStage)",
                              "lines": ["[pairforge] instruct: waiting for the LLM server"]}})
            print("counts", c.worker_lines, c.worker_warnings, c.oom_notes, file=c.stream)
        print("after the job", file=sys.stderr)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr
    console = p.stderr
    for noise in ("C++ line", "python line", "child of the job", "MapWorker", "Usage"):
        assert noise not in console
    assert "pairforge: our milestone" in console and "after the job" in console
    assert "counts 4 2 1" in console                           # 3 actor lines + the raylet's; 2 warnings
    # our own warning from an actor (why the job waits) is on the terminal too, without the prefix
    assert "pairforge: instruct: waiting for the LLM server" in console and "[pairforge]" not in console
    assert "Ray killed workers for memory pressure" in console   # the one Ray notice worth a line
    ray_log = (tmp_path / RAY_LOG).read_text()
    for line in ("C++ line", "python line", "child of the job", "our milestone"):
        assert line in ray_log
    workers = (tmp_path / WORKER_LOG).read_text()
    assert "(MapWorker(FilterStage) pid=42) WARNING filter: slow" in workers and "Usage" not in workers
    assert "(MapWorker(InstructStage) pid=43) instruct: waiting for the LLM server" in workers


def test_worker_logging_prefixes_our_warnings_only_inside_a_ray_worker():
    import logging

    from pipeline.console import WORKER_PREFIX, setup_worker_logging
    lg = logging.getLogger("pairforge")
    before = list(lg.handlers)
    setup_worker_logging()                       # not a Ray worker: nothing changes
    assert lg.handlers == before
    code = textwrap.dedent("""
        import logging, ray
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        @ray.remote
        def f():
            from pipeline.console import setup_worker_logging
            setup_worker_logging(); setup_worker_logging()     # once, however often it is called
            lg = logging.getLogger("pairforge")
            return [h.formatter._fmt for h in lg.handlers], lg.propagate
        print(ray.get(f.remote()))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"([{WORKER_PREFIX + '%(message)s'!r}], False)" in p.stdout, p.stdout


def test_disabled_console_redirects_nothing(tmp_path):
    with Console(tmp_path, enabled=False) as c:
        assert c.stream is sys.stderr
    assert not (tmp_path / RAY_LOG).exists()


def test_closing_summary_names_output_and_logs():
    s = {"samples": 12, "shards": 3, "shards_skipped": 1, "samples_run": 8, "seconds": 41.2, "shards_written": 2,
         "accepted": 5, "rejected": 3, "output": "/o", "logs": "/o/logs",
         "log_files": {"ray.log": "/o/logs/ray.log", "vllm_server.log": "/o/logs/vllm_server.log"},
         "worker_warnings": 2}
    text = closing_summary(s)
    assert "8 samples → 5 accepted, 3 rejected" in text and "2 shard(s) written (1 already there, 3 in all)" in text
    assert "output: /o" in text and "logs:   /o/logs  (ray.log, vllm_server.log; 2 warning line(s)" in text
    assert "nothing to do" in closing_summary({"samples": 12, "shards": 3, "shards_skipped": 3, "samples_run": 0})
