"""Tests for concmagic.compare (concmagic/comparison.py) and the %%compare magic.

The classifier is a pure function of the figures, so each verdict kind and
each threshold edge is tested with made-up numbers. Real cells then check
that real measurements reach the right verdict; those that depend on free
cores measure first how busy the machine was, and skip (saying so) only
when other programs took the cores every time.
"""
import os
import re
import threading
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.lib.pretty import pretty
from IPython.utils.capture import capture_output

import concmagic
from concmagic import comparison as cmp
from concmagic import engine
from concmagic.comparison import (
    CONTENDED, GAIN, GIL_BUSY, GIL_FREE, IMBALANCE, KINDS, TOO_SHORT, WAITING, WARMUP_NOTE,
    Comparison, classify,
)
from concmagic.errors import WorkerError
from concmagic.report import Report, WorkerRun

USABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
needs_two_cores = pytest.mark.skipif(
    USABLE_CORES < 2, reason=f"needs 2 usable cores to run side by side; this process has "
                             f"{USABLE_CORES}")


# ---------------------------------------------------------------------------
# classify(), on made-up figures
# ---------------------------------------------------------------------------
def figures(**changes):
    """A clean CPU-bound run of 2 workers on 2 cores; `changes` override keys,
    and ``threads_speedup=...`` style keys override one model's value."""
    f = {
        "n_workers": 2, "cores": 2, "gil_enabled": True,
        "models": ("serial", "threads", "processes"),
        "wall": {"serial": 0.2, "threads": 0.2, "processes": 0.11},
        "speedup": {"serial": 1.0, "threads": 1.0, "processes": 1.8},
        "cpu_parallelism": {"serial": 1.0, "threads": 1.0, "processes": 1.8},
        "gil_wait": {"serial": 0.9, "threads": 0.93, "processes": None},
        "worker_time": 0.1, "cpu_fraction": 0.99, "queue_fraction": 0.0,
        "busiest_worker": 1, "busiest_share": 0.5,
    }
    for key, value in changes.items():
        model, _, figure = key.partition("_")
        if figure in ("speedup", "cpu_parallelism", "gil_wait", "wall") \
                and model in ("serial", "threads", "processes", "asyncio"):
            f[figure][model] = value
        else:
            f[key] = value
    return f


def test_gil_bound():
    verdict = classify(figures(threads_speedup=1.03, threads_gil_wait=0.97,
                               processes_speedup=1.9))
    assert verdict.kind == "gil-bound"
    assert verdict.text == (
        "GIL-bound: threads 1.03x (CPU parallelism 1.00x: they took turns), the GIL was busy "
        "97% of the time; processes 1.90x; use processes, or release the GIL (see "
        "concmagic.kernels, path='nogil')")
    assert str(verdict) == verdict.text


def test_gil_bound_edges():
    assert classify(figures(threads_gil_wait=GIL_BUSY)).kind == "gil-bound"
    assert classify(figures(threads_gil_wait=GIL_BUSY - 0.01)).kind != "gil-bound"
    # A gain in threads (in wall time and in CPU parallelism) is not GIL-bound.
    gained = figures(threads_gil_wait=0.9, threads_speedup=GAIN, threads_cpu_parallelism=GAIN)
    assert classify(gained).kind == "mixed"
    assert classify(figures(threads_gil_wait=0.9, threads_speedup=GAIN - 0.01)).kind == "gil-bound"


def test_gil_bound_though_a_slow_serial_run_made_threads_look_faster():
    # Serial slowed by other programs: 1.36x on the wall clock, yet the
    # threads used one core between them. CPU-bound work cannot finish
    # sooner without computing on several cores at once.
    verdict = classify(figures(threads_speedup=1.36, threads_cpu_parallelism=0.99,
                               threads_gil_wait=0.93))
    assert verdict.kind == "gil-bound"
    assert "threads 1.36x (CPU parallelism 0.99x: they took turns)" in verdict.text


def test_gil_bound_when_no_model_gains():
    verdict = classify(figures(processes_speedup=1.05, processes_cpu_parallelism=1.1))
    assert verdict.kind == "gil-bound"
    assert verdict.text.endswith("processes 1.05x; release the GIL in compiled code "
                                 "(see concmagic.kernels, path='nogil')")


def test_waiting_while_holding_the_gil():
    verdict = classify(figures(cpu_fraction=0.01, threads_cpu_parallelism=0.01,
                               threads_gil_wait=0.99, processes_speedup=1.99))
    assert verdict.kind == "gil-bound"
    assert "took turns" not in verdict.text              # they waited, not computed
    assert "the work waits while holding the GIL: release it around the wait" in verdict.text
    # Waiting is not bound by the cores: no cores sentence, even with more workers.
    more = classify(figures(cpu_fraction=0.01, threads_cpu_parallelism=0.01, n_workers=4,
                            threads_gil_wait=0.99, processes_speedup=3.9))
    assert more.kind == "gil-bound" and "usable core" not in more.text


def test_io_bound():
    verdict = classify(figures(cpu_fraction=0.02, threads_speedup=3.9, threads_gil_wait=0.03,
                               threads_cpu_parallelism=0.05, processes_speedup=1.1,
                               processes_cpu_parallelism=0.05, n_workers=4, cores=2))
    assert verdict.kind == "io-bound"
    assert verdict.text == ("I/O-bound: threads 3.90x, the GIL was mostly free (3.0%); the "
                            "work waited 98% of the time rather than computed; processes 1.10x")
    # Waiting work is not bound by the cores: no cores sentence.
    assert "usable core" not in verdict.text


def with_asyncio(**changes):
    """figures() with an asyncio run too (4 models)."""
    base = {"models": ("serial", "threads", "processes", "asyncio"), "asyncio_speedup": 1.0,
            "asyncio_cpu_parallelism": 1.0, "asyncio_gil_wait": 0.9, "asyncio_wall": 0.2}
    return figures(**{**base, **changes})


IO = dict(cpu_fraction=0.02, threads_speedup=3.9, threads_gil_wait=0.03,
          threads_cpu_parallelism=0.05, processes_speedup=3.5, processes_cpu_parallelism=0.05,
          n_workers=4)


def test_io_bound_compares_threads_and_asyncio():
    verdict = classify(with_asyncio(asyncio_speedup=3.95, asyncio_gil_wait=0.01, **IO))
    assert verdict.kind == "io-bound"
    assert verdict.text == (
        "I/O-bound: threads 3.90x, the GIL was mostly free (3.0%); the work waited 98% of the "
        "time rather than computed; processes 3.50x; asyncio 3.95x waited as well on one "
        "thread, with no thread per wait: the lighter way when the waits can be awaited")


def test_io_bound_with_a_blocked_event_loop():
    # time.sleep in an asyncio task: the tasks wait one after another.
    verdict = classify(with_asyncio(asyncio_speedup=1.0, **IO))
    assert verdict.kind == "io-bound"
    assert verdict.text.endswith(
        "; asyncio 1.00x: its tasks waited one after another, so the waits block its one "
        "thread (time.sleep, blocking I/O): await asyncio.sleep or an async client instead, "
        "or use threads")
    # Gaining, but clearly less than threads (beyond the noise): part of it blocks.
    partly = classify(with_asyncio(asyncio_speedup=2.0, **IO))
    assert "asyncio 2.00x, less than threads: some of its waits block" in partly.text


def test_io_bound_in_asyncio_alone():
    verdict = classify(figures(models=("serial", "asyncio"), cpu_fraction=0.01, n_workers=4,
                               asyncio_speedup=3.9, asyncio_cpu_parallelism=0.01))
    assert verdict.kind == "io-bound"
    assert verdict.text.startswith("I/O-bound: asyncio 3.90x; the work waited 99%")


def test_cpu_bound_says_asyncio_runs_it_serially():
    verdict = classify(with_asyncio())
    assert verdict.kind == "gil-bound"
    assert verdict.text.endswith(
        ". asyncio ran it serially (1.00x): its tasks share one thread and take turns, and "
        "work that computes never awaits")
    # Named once, in its own sentence, not also in the list of speedups.
    assert verdict.text.count("asyncio") == 1
    parallel = classify(with_asyncio(threads_speedup=1.95, threads_cpu_parallelism=1.96,
                                     threads_gil_wait=0.01))
    assert parallel.kind == "parallel" and "asyncio ran it serially (1.00x)" in parallel.text


def test_waiting_edge_counts_queued_time_as_wanting_a_cpu():
    waiting = dict(threads_speedup=1.9, threads_gil_wait=0.01, threads_cpu_parallelism=0.1)
    assert classify(figures(cpu_fraction=WAITING - 0.01, **waiting)).kind == "io-bound"
    assert classify(figures(cpu_fraction=WAITING, **waiting)).kind != "io-bound"
    # 30% computing and 30% queued behind other programs: it wanted a CPU
    # 60% of the time, so it did not mostly wait.
    assert classify(figures(cpu_fraction=0.3, queue_fraction=0.3, **waiting)).kind != "io-bound"


def test_waiting_work_that_threads_do_not_speed_up():
    verdict = classify(figures(cpu_fraction=0.05, threads_speedup=1.0, threads_gil_wait=0.01,
                               processes_speedup=1.0))
    assert verdict.kind == "mixed"
    assert "no model gained though the work waits" in verdict.text


def test_too_short():
    verdict = classify(figures(worker_time=0.0004, threads_speedup=0.6, processes_speedup=0.1))
    assert verdict.kind == "too-short"
    assert verdict.text.startswith("too short to tell: each worker ran 400 ")
    assert "start-up cost dominates" in verdict.text and "processes 0.10x" in verdict.text
    assert classify(figures(worker_time=TOO_SHORT * 0.99)).kind == "too-short"
    assert classify(figures(worker_time=TOO_SHORT)).kind != "too-short"


def test_load_imbalance():
    verdict = classify(figures(busiest_share=0.65, threads_gil_wait=0.001, threads_speedup=1.5,
                               threads_cpu_parallelism=1.5, processes_speedup=1.45))
    assert verdict.kind == "load-imbalance"
    assert verdict.text.startswith(
        "load imbalance: worker 1 did 65% of the CPU work, so no model can beat 1.54x; "
        "threads 1.50x; processes 1.45x")


def test_load_imbalance_edges():
    # Bound 1/share against IMBALANCE x min(workers, cores) = 1.8 on 2 cores.
    limit = IMBALANCE * 2
    assert classify(figures(busiest_share=1 / limit + 0.01)).kind == "gil-bound"   # GIL first
    free = dict(threads_gil_wait=0.001, threads_speedup=1.5, threads_cpu_parallelism=1.5)
    assert classify(figures(busiest_share=1 / limit + 0.01, **free)).kind == "load-imbalance"
    assert classify(figures(busiest_share=1 / limit - 0.01, **free)).kind == "parallel"
    # 4 workers on 2 cores: the cores bind before a 30% share does.
    assert classify(figures(n_workers=4, busiest_share=0.3, **free)).kind == "parallel"
    # Waiting work's CPU shares say nothing about its balance.
    waiting = figures(cpu_fraction=0.01, busiest_share=0.9, threads_speedup=1.9,
                      threads_gil_wait=0.01)
    assert classify(waiting).kind == "io-bound"


def test_parallel():
    verdict = classify(figures(threads_speedup=1.95, threads_cpu_parallelism=1.96,
                               threads_gil_wait=0.001, processes_speedup=1.8))
    assert verdict.kind == "parallel"
    assert verdict.text == ("parallel: threads 1.95x with the GIL free (0.1%: nogil code); "
                            "processes 1.80x")
    edge = dict(threads_speedup=1.9, threads_cpu_parallelism=1.9)
    assert classify(figures(threads_gil_wait=GIL_FREE, **edge)).kind == "parallel"
    assert classify(figures(threads_gil_wait=GIL_FREE + 0.01, **edge)).kind == "mixed"


def test_parallel_in_processes_only():
    f = figures(models=("serial", "processes"), processes_speedup=1.9)
    del f["speedup"]["threads"], f["gil_wait"]["threads"]
    assert classify(f).text == "parallel: processes 1.90x"


def test_free_threaded_python_says_no_gil():
    verdict = classify(figures(gil_enabled=False, threads_gil_wait=None, threads_speedup=1.9,
                               threads_cpu_parallelism=1.9, serial_gil_wait=None))
    assert verdict.kind == "parallel"
    assert "threads 1.90x (no GIL: free-threaded Python)" in verdict.text


def test_mixed_names_what_it_saw():
    verdict = classify(figures(threads_gil_wait=0.35, threads_speedup=1.3,
                               threads_cpu_parallelism=1.3, processes_speedup=1.1))
    assert verdict.kind == "mixed"
    assert verdict.text == ("mixed: threads 1.30x (GIL busy 35%), processes 1.10x; part of the "
                            "work holds the GIL")


def test_gil_not_measured_is_not_guessed():
    verdict = classify(figures(threads_gil_wait=None, serial_gil_wait=None))
    assert verdict.kind == "mixed"
    assert "the GIL was not measured" in verdict.text and "GIL-bound" not in verdict.text


def test_one_worker():
    assert classify(figures(n_workers=1)).kind == "one-worker"


def test_few_cores_cap_speedup_verdicts():
    verdict = classify(figures(n_workers=4, cores=2))
    assert verdict.kind == "gil-bound"
    assert verdict.text.endswith(". This machine has 2 usable cores, so no model can beat "
                                 "2x here")
    assert "usable core" not in classify(figures(n_workers=2, cores=2)).text
    short = classify(figures(n_workers=4, cores=2, worker_time=1e-4))
    assert "usable core" not in short.text


def test_busy_machine_is_said():
    busy = classify(figures(queue_fraction=CONTENDED))
    assert busy.text.endswith(". The machine was busy with other work (the serial run waited "
                              "10% of its time for a CPU), so these speedups are uncertain")
    assert "busy with other work" not in classify(figures(queue_fraction=CONTENDED - 0.01)).text


def test_without_a_serial_run():
    f = figures(models=("threads", "processes"), cpu_fraction=None, queue_fraction=None,
                busiest_share=None, busiest_worker=None,
                speedup={"threads": None, "processes": None})
    verdict = classify(f)
    assert verdict.kind == "gil-bound"                  # from the GIL figure alone
    assert verdict.text.startswith("GIL-bound: threads -")


def test_every_kind_is_listed():
    seen = {classify(f).kind for f in [
        figures(n_workers=1), figures(worker_time=1e-4), figures(),
        figures(cpu_fraction=0.01, threads_speedup=2, threads_gil_wait=0.01),
        figures(busiest_share=0.7, threads_gil_wait=0.01),
        figures(threads_gil_wait=0.01, threads_speedup=1.9, threads_cpu_parallelism=1.9),
        figures(threads_gil_wait=0.3)]}
    assert seen == set(KINDS)


# ---------------------------------------------------------------------------
# Comparison, on made-up reports
# ---------------------------------------------------------------------------
def report(model, wall, cpus, gil=None, starts=None, stdout=""):
    n = len(cpus)
    starts = starts or [0.0] * n
    workers = [WorkerRun(i, pid=1, start=starts[i], end=starts[i] + wall * 0.9, cpu=c,
                         result=i, stdout=stdout) for i, c in enumerate(cpus)]
    return Report(model=model, n_workers=n, wall=wall, workers=workers, gil_wait=gil)


def made_up(**kw):
    reports = {
        "serial": report("serial", 0.4, [0.12, 0.28], gil=0.9, starts=[0.0, 0.12]),
        "threads": report("threads", 0.39, [0.2, 0.2], gil=0.01),
        "processes": report("processes", 0.21, [0.2, 0.2]),
    }
    return Comparison(reports, cores=2, **kw)


def test_speedup_and_efficiency():
    c = made_up()
    assert c.speedup("serial") == 1.0
    assert c.speedup("threads") == pytest.approx(0.4 / 0.39)
    assert c.efficiency("processes") == pytest.approx(0.4 / 0.21 / 2)
    no_serial = Comparison({"threads": report("threads", 0.1, [0.1, 0.1])}, cores=2)
    assert no_serial.speedup("threads") is None and no_serial.efficiency("threads") is None


def test_figures_come_from_the_reports():
    f = made_up(run_queue={"serial": 0.04}).figures
    assert f["n_workers"] == 2 and f["cores"] == 2
    assert f["models"] == ("serial", "threads", "processes")
    assert f["busiest_worker"] == 1 and f["busiest_share"] == pytest.approx(0.7)
    assert f["cpu_fraction"] == pytest.approx(0.4 / 0.4)
    assert f["queue_fraction"] == pytest.approx(0.1)
    assert f["worker_time"] == pytest.approx(0.36)
    assert f["gil_wait"] == {"serial": 0.9, "threads": 0.01, "processes": None}
    assert f["speedup"]["processes"] == pytest.approx(0.4 / 0.21)


def test_text_table_and_verdict():
    c = made_up()
    lines = str(c).splitlines()
    assert lines[0] == "compare: 2 workers, 2 usable cores"
    assert re.split(r"\s{2,}", lines[1]) == ["model", "wall", "speedup", "efficiency",
                                             "CPU parallelism", "GIL wait"]
    assert re.split(r"\s+", lines[2]) == ["serial", "400", "ms", "1.00x", "50%", "1.00x", "90%"]
    assert re.split(r"\s+", lines[4]) == ["processes", "210", "ms", "1.90x", "95%", "1.90x", "-"]
    assert lines[5] == c.verdict == classify(c.figures).text
    assert c.kind == "load-imbalance"                  # worker 1 did 70%
    assert pretty(c) == str(c)
    assert repr(c) == "<Comparison serial, threads, processes: load-imbalance>"


def test_text_on_a_python_without_gil():
    c = Comparison({"serial": report("serial", 0.4, [0.2, 0.2]),
                    "threads": report("threads", 0.2, [0.2, 0.2])}, cores=2, gil_enabled=False)
    assert str(c).splitlines()[3].endswith("no GIL")


def test_notes():
    c = made_up(warmups={"threads": 0.001, "processes": 0.2})
    c.reports["processes"].notes.append("1 name assigned with `global` stayed there")
    assert c.notes == [
        "starting the 2 worker processes took 200 ms (a warm-up run before the measured one, "
        "not counted; later runs reuse them)",
        "processes: 1 name assigned with `global` stayed there",
    ]
    assert made_up(warmups={"processes": WARMUP_NOTE * 0.9}).notes == []
    printed = made_up()
    printed.reports["threads"].workers[0].stdout = "hello\n"
    assert any("printed output" in note for note in printed.notes)
    assert str(c).splitlines()[-2].startswith("note: starting the 2 worker processes")


def test_html_has_table_verdict_and_reports(monkeypatch):
    from concmagic import plot
    monkeypatch.setattr(plot, "plot_comparison",
                        lambda comparison: (_ for _ in ()).throw(ImportError("no matplotlib")))
    page = made_up()._repr_html_()
    assert "<th>model</th>" in page and "load imbalance: worker 1 did 70%" in page
    assert page.count("<details>") == 3                  # each model's own report
    assert "<img" not in page                            # no picture without plotting


def test_html_embeds_the_timelines_picture():
    pytest.importorskip("matplotlib")
    c = made_up()
    page = c._repr_html_()
    assert page.count('<img alt="per-worker timelines" src="data:image/png;base64,') == 1
    assert c._repr_html_() == page                       # drawn once, then reused


def test_plot_saves_to_a_path(tmp_path):
    pytest.importorskip("matplotlib")
    fig = made_up().plot(tmp_path / "c.png")
    assert fig is not None and (tmp_path / "c.png").stat().st_size > 1000


def test_to_dict():
    d = made_up().to_dict()
    assert d["kind"] == "load-imbalance" and set(d["reports"]) == {"serial", "threads",
                                                                    "processes"}
    assert d["figures"]["busiest_share"] == pytest.approx(0.7)


# ---------------------------------------------------------------------------
# compare() on real cells
# ---------------------------------------------------------------------------
def _cpu_ticks():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3] + values[4]            # all, idle + iowait


def others_cores(func):
    """``(func(), cores other programs used meanwhile, on average)``: the
    machine's busy time less this process's own CPU, per wall second."""
    hz = os.sysconf("SC_CLK_TCK")
    all0, idle0 = _cpu_ticks()
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = func()
    all1, idle1 = _cpu_ticks()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    busy = ((all1 - all0) - (idle1 - idle0)) / hz
    return result, max(busy - cpu, 0.0) / wall


def python_loop(worker_id, n_workers):
    total = 0
    for i in range(1_500_000):
        total += i
    return total


def nogil_primes(worker_id, n_workers):
    return concmagic.kernels.count_primes(0, 2_000_000, path="nogil")


def sleeper(worker_id, n_workers):
    time.sleep(0.2)
    return worker_id


def trivial(worker_id, n_workers):
    return worker_id


@needs_two_cores
@pytest.mark.timeout(90)
def test_pure_python_in_threads_is_gil_bound():
    tries = []
    for _ in range(3):                       # the speedup is wall-clock: noise gets 3 tries
        c = concmagic.compare(python_loop, 2)
        tries.append(c)
        assert c.kind == "gil-bound", str(c)
        assert c.reports["threads"].gil_wait >= GIL_BUSY, str(c)
        assert c.reports["threads"].cpu_parallelism < 1.3, str(c)     # they took turns
        assert c.verdict.startswith("GIL-bound: threads ")
        assert c.reports["threads"].results == [1_124_999_250_000] * 2
        if c.speedup("threads") < 1.3:
            break
    else:
        pytest.fail("threads sped up pure Python 3 times:\n" + "\n\n".join(map(str, tries)))


@needs_two_cores
@pytest.mark.timeout(90)
def test_nogil_kernel_in_threads_runs_in_parallel(monkeypatch):
    # Threads can only run side by side on cores no one else is using: each
    # try measures how many cores other programs took during the threads run.
    measured_run = engine.run
    others = []

    def run(func, n, model, **kw):
        if model != "threads" or isinstance(func, cmp._Warmup):
            return measured_run(func, n, model, **kw)
        report, load = others_cores(lambda: measured_run(func, n, model, **kw))
        others.append(load)
        return report

    monkeypatch.setattr(engine, "run", run)
    seen = []
    for _ in range(3):
        c = concmagic.compare(nogil_primes, 2, models=("serial", "threads"))
        threads = c.reports["threads"]
        assert threads.gil_wait < GIL_FREE, str(c)              # true whatever the load
        seen.append((others[-1], str(c)))
        if threads.cpu_parallelism > 1.5:
            assert c.kind == "parallel", str(c)
            assert "with the GIL free" in c.verdict
            return
    free = [(load, text) for load, text in seen if load <= 0.3]
    if free:
        pytest.fail("nogil threads did not run in parallel although the cores were free:\n"
                    + "\n\n".join(f"others used {load:.2f} cores\n{text}" for load, text in free))
    pytest.skip("other programs kept the cores busy in every try (they used "
                + ", ".join(f"{load:.2f}" for load, _ in seen) + " cores)")


@pytest.mark.timeout(90)
def test_sleeping_workers_are_io_bound():
    c = concmagic.compare(sleeper, 2)
    assert c.kind == "io-bound", str(c)
    assert c.speedup("threads") > 1.5 and c.reports["threads"].gil_wait < GIL_FREE, str(c)
    assert c.verdict.startswith("I/O-bound: threads ")
    assert c.figures["cpu_fraction"] < 0.1
    assert [r.results for r in c.reports.values()] == [[0, 1]] * 3


@pytest.mark.timeout(60)
def test_trivial_work_is_too_short():
    c = concmagic.compare(trivial, 2)
    assert c.kind == "too-short", str(c)
    assert c.figures["worker_time"] < TOO_SHORT
    assert c.verdict.startswith("too short to tell: each worker ran ")


@pytest.mark.timeout(60)
def test_models_run_in_order_with_warmed_pools():
    c = concmagic.compare(trivial, 3, models=("threads", "serial"))
    assert list(c.reports) == ["threads", "serial"]
    assert list(c.warmups) == ["threads"]                 # serial has no pool
    assert [r.model for r in c.reports.values()] == ["threads", "serial"]
    assert all(r.n_workers == 3 for r in c.reports.values())


@pytest.mark.timeout(60)
def test_failing_worker_stops_the_comparison():
    def fails_off_the_main_thread(worker_id, n_workers):
        if worker_id == 1 and threading.current_thread() is not threading.main_thread():
            raise ValueError("worker 1 broke")
        return worker_id

    with pytest.raises(WorkerError) as info:
        concmagic.compare(fails_off_the_main_thread, 2)
    err = info.value
    assert err.report.model == "threads"
    assert isinstance(err.errors[1], ValueError) and err.results == [0, None]
    assert list(err.comparison.reports) == ["serial", "threads"]    # processes never ran
    assert err.comparison.reports["serial"].ok


@pytest.mark.timeout(60)
def test_no_measurement_means_no_gil_claim():
    c = concmagic.compare(python_loop, 2, models=("serial", "threads"), measure=False)
    assert c.reports["threads"].gil_wait is None
    assert c.kind != "gil-bound" and "GIL-bound" not in c.verdict


@pytest.mark.timeout(60)
def test_start_method_goes_to_processes_only():
    c = concmagic.compare(trivial, 2, models=("serial", "threads"), start_method="spawn")
    assert list(c.reports) == ["serial", "threads"]


@pytest.mark.parametrize("models, message", [
    (("serial", "bogus"), f"models must be one or more of {', '.join(map(repr, engine.MODELS))}; "
                          "got ('serial', 'bogus')"),
    ((), "models must be one or more of"),
    (("threads", "threads"), "must not repeat"),
])
def test_bad_models(models, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        concmagic.compare(trivial, 2, models=models)


def test_bad_worker_count():
    with pytest.raises(ValueError, match="n must be a positive integer; got 0"):
        concmagic.compare(trivial, 0, models=("serial",))


def test_public_names_stay_functions_after_the_modules_load():
    import concmagic.comparison  # noqa: F401 - importing the module must not shadow the name
    import concmagic.gil  # noqa: F401
    assert concmagic.compare is cmp.compare and callable(concmagic.gilcheck)
    assert {"compare", "Comparison", "gilcheck", "GilCheck"} <= set(concmagic.__all__)


# ---------------------------------------------------------------------------
# %%compare, as a user runs it
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "concmagic")
    return ip


@pytest.fixture
def ip(shell):
    before = set(shell.user_ns)
    yield shell
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]


def run_magic(ip, line, cell):
    with capture_output() as out:
        value = ip.run_cell_magic("compare", line, cell)
    return value, out


@pytest.mark.timeout(60)
def test_magic_shows_and_stores_the_comparison(ip):
    ip.user_ns["base"] = 10
    value, out = run_magic(ip, "-n 2 -o c", "import time\ntime.sleep(0.05)\nbase + worker_id")
    assert value is None
    c = ip.user_ns["c"]
    assert isinstance(c, Comparison)
    assert list(c.reports) == ["serial", "threads", "processes"]
    assert [r.results for r in c.reports.values()] == [[10, 11]] * 3
    (shown,) = out.outputs
    assert shown.data["text/plain"] == str(c)
    assert shown.data["text/plain"].startswith("compare: 2 workers")
    assert c.verdict in shown.data["text/html"]
    assert c.kind == "io-bound", str(c)


@pytest.mark.timeout(60)
def test_magic_models_quiet_and_line_form(ip):
    value, out = run_magic(ip, "-n 2 -q -o c --models threads,serial", "worker_id * 2")
    assert value is None and out.outputs == []
    assert list(ip.user_ns["c"].reports) == ["threads", "serial"]
    assert ip.user_ns["c"].reports["threads"].results == [0, 2]
    with capture_output() as out:
        ip.run_line_magic("compare", "-n 3 -q -o d --models serial worker_id")
    assert ip.user_ns["d"].reports["serial"].results == [0, 1, 2]


@pytest.mark.timeout(90)
def test_magic_compares_an_awaiting_cell_across_the_four_models(ip):
    # With asyncio among the models, a cell that awaits is a coroutine; the
    # other models run it in an event loop per worker. Four 0.2 s sleeps:
    # about 0.8 s serially, about 0.2 s where they overlap.
    cell = "import asyncio\nawait asyncio.sleep(0.2)\nworker_id * 10"
    run_magic(ip, "-n 4 -q -o c --models serial,threads,processes,asyncio", cell)
    c = ip.user_ns["c"]
    assert list(c.reports) == ["serial", "threads", "processes", "asyncio"]
    assert all(r.results == [0, 10, 20, 30] for r in c.reports.values())
    assert c.reports["serial"].wall >= 0.75
    assert c.reports["asyncio"].wall < 0.6 and c.reports["threads"].wall < 0.6
    assert c.kind == "io-bound", c.verdict
    assert "asyncio" in c.verdict and "threads" in c.verdict


@pytest.mark.timeout(60)
def test_magic_awaiting_cell_needs_asyncio_among_the_models(ip):
    with pytest.raises(UsageError, match="top-level `await` needs an async cell"):
        run_magic(ip, "-n 2 --models serial,threads", "import asyncio\nawait asyncio.sleep(0)")
    with pytest.raises(UsageError, match="cannot use comm"):
        run_magic(ip, "-n 2 --models threads,asyncio",
                  "import asyncio\nawait asyncio.sleep(0)\ncomm.barrier()")


@pytest.mark.timeout(60)
def test_magic_no_measure(ip):
    run_magic(ip, "-n 2 -q -o c --no-measure --models serial,threads", "worker_id")
    threads = ip.user_ns["c"].reports["threads"]
    assert threads.gil_wait is None and threads.samples is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["threads", "processes"])
def test_no_measure_on_the_running_magics(ip, model):
    with capture_output():
        ip.run_cell_magic(model, "-n 2 -q -o r --no-measure", "worker_id")
        ip.run_cell_magic(model, "-n 2 -q -o m", "worker_id")
    assert ip.user_ns["r"].samples is None and ip.user_ns["r"].gil_wait is None
    assert ip.user_ns["m"].samples is not None


@pytest.mark.timeout(60)
def test_magic_prints_the_first_runs_output_once(ip):
    _, out = run_magic(ip, "-n 2 -q -o c", "print('hello', worker_id)")
    assert out.stdout.count("[stdout:0] hello 0") == 1
    assert out.stdout.count("[stdout:1] hello 1") == 1
    assert ip.user_ns["c"].reports["processes"].output() == "[stdout:0] hello 0\n[stdout:1] hello 1"


@pytest.mark.timeout(60)
def test_magic_notes_globals_left_in_processes(ip):
    _, out = run_magic(ip, "-n 2 -q -o c", "global total_x\ntotal_x = worker_id")
    assert ("processes: 1 name assigned with `global` stayed in the worker processes: total_x"
            in ip.user_ns["c"].notes)


@pytest.mark.timeout(60)
def test_magic_failing_worker(ip):
    with pytest.raises(WorkerError) as info, capture_output() as out:
        ip.run_cell_magic("compare", "-n 2 -o c", "1 / (1 - worker_id)")
    assert info.value.report.model == "serial"
    assert list(ip.user_ns["c"].reports) == ["serial"]             # stopped there
    (shown,) = out.outputs
    assert shown.data["text/plain"].startswith("serial: 2 workers")


@pytest.mark.parametrize("line, message", [
    ("-n 2 --models threads,bogus",
     f"--models takes a comma-separated list of {', '.join(engine.MODELS)}; got 'threads,bogus'"),
    ("-n 2 --models threads,threads", "--models names a model twice"),
    ("-n 0", "-n/--workers must be a positive integer; got 0"),
    ("-n 2 -o 1x", "-o needs a variable name; got '1x'"),
    ("-n 2 --timeout 0", "--timeout must be a positive number of seconds"),
    ("-n 2 --start-method fork", "invalid choice: 'fork'"),
    ("-n 2 worker_id", "%%compare takes options only on its first line"),
    ("-n 2 --pull x", "unrecognized arguments: --pull"),
])
def test_magic_usage_errors(ip, line, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        ip.run_cell_magic("compare", line, "worker_id")


def test_magic_line_form_needs_an_expression(ip):
    with pytest.raises(UsageError, match="%compare needs an expression"):
        ip.run_line_magic("compare", "-n 2")


def test_magic_help_lists_its_options(ip):
    doc = ip.find_cell_magic("compare").__doc__
    for option in ("--models", "-o NAME", "--no-measure", "--timeout", "--start-method"):
        assert option in doc
    assert "--no-measure" in ip.find_cell_magic("threads").__doc__
