"""focus_detr.engine.soak: the verdict on resident memory, file handles and threads sampled over a long run."""
from focus_detr.engine.soak import Limits, Sample, SampleTable, soak_verdict, warmup_iterations

MAX_ITER = 1000


def _series(rss=None, fds=None, threads=None, workers_rss=None, n=101, iterations=None):
    """``n`` samples evenly over the run (iterations 0..MAX_ITER); each measure is a function of the sample index
    (default: constant)."""
    iterations = iterations or [round(MAX_ITER * i / (n - 1)) for i in range(n)]
    return [Sample(iterations=iterations[i], seconds=float(i), rss_mib=(rss or (lambda i: 1000.0))(i), workers=2,
                   workers_rss_mib=(workers_rss or (lambda i: 900.0))(i), fds=(fds or (lambda i: 60))(i),
                   threads=(threads or (lambda i: 10))(i)) for i in range(n)]


def test_a_flat_run_passes_whatever_the_warm_up_did():
    # memory doubles and handles come and go during the warm-up (first 200 iterations): not judged
    samples = _series(rss=lambda i: 500.0 + 25 * min(i, 20), fds=lambda i: 90 if i < 20 else 60)
    verdict = soak_verdict(samples, 200, MAX_ITER, Limits())
    assert verdict.ok, verdict.problems
    assert verdict.window == 8  # 80 samples between iteration 200 and the end of training, a tenth each
    assert verdict.measures["rss_mib"] == dict(baseline=1000.0, final=1000.0, growth=0.0, limit=0.05)
    assert verdict.measures["fds"] == dict(baseline=60, final=60, growth=0, limit=0)


def test_memory_growth_past_the_limit_after_warm_up_fails():
    # +6% from iteration 200 to 1000; 5.4% between the windows' medians
    slow = _series(rss=lambda i: 1000.0 + 0.75 * max(i - 20, 0))
    verdict = soak_verdict(slow, 200, MAX_ITER, Limits())
    assert [p.split(":")[0] for p in verdict.problems] == ["rss_mib"]
    assert verdict.problems[0].startswith("rss_mib: grew 5.4% after warm-up (1003 -> 1057 MiB; limit 5%)")
    assert soak_verdict(slow, 200, MAX_ITER, Limits(rss_growth=0.06)).ok
    workers = soak_verdict(_series(workers_rss=lambda i: 900.0 + 2 * i), 200, MAX_ITER, Limits())
    assert [p.split(":")[0] for p in workers.problems] == ["workers_rss_mib"]


def test_a_spike_at_an_evaluation_or_a_checkpoint_write_is_not_growth():
    # every 20th sample (an evaluation) takes 30% more memory, two more handles and a thread
    spiky = _series(rss=lambda i: 1300.0 if i % 20 == 19 else 1000.0, fds=lambda i: 62 if i % 20 == 19 else 60,
                    threads=lambda i: 11 if i % 20 == 19 else 10)
    assert soak_verdict(spiky, 200, MAX_ITER, Limits()).ok


def test_one_leaked_file_handle_or_thread_per_evaluation_fails():
    leaky = _series(fds=lambda i: 60 + i // 20, threads=lambda i: 10 + i // 20)
    verdict = soak_verdict(leaky, 200, MAX_ITER, Limits())
    assert verdict.problems == ["fds: 64 at the end, 61 after warm-up (limit +0): leaked",
                                "threads: 14 at the end, 11 after warm-up (limit +0): leaked"]
    assert soak_verdict(leaky, 200, MAX_ITER, Limits(fd_growth=3, thread_growth=3)).ok


def test_samples_after_the_last_iteration_are_shutdown_not_growth():
    # the last logged iteration is MAX_ITER: the workers have stopped, handles are closed, memory is freed or not
    samples = _series() + [Sample(MAX_ITER, 200.0, 1500.0, 0, 0.0, 13, 1)] * 10
    assert soak_verdict(samples, 200, MAX_ITER, Limits()).ok


def test_too_few_samples_after_the_warm_up_are_a_failure_not_a_pass():
    samples = _series(n=11)[:3]  # iterations 0, 100, 200
    verdict = soak_verdict(samples, 200, MAX_ITER, Limits())
    assert verdict.problems == ["1 sample(s) between the warm-up (200 iterations) and the end of training (1000): "
                                "the run is too short or the samples too far apart to judge"]


def test_the_warm_up_ends_at_the_first_evaluation_or_after_a_tenth_of_the_run():
    assert warmup_iterations(1000, 200) == 200
    assert warmup_iterations(1000, 0) == 100
    assert warmup_iterations(1000, 1000) == 100  # the only evaluation is at the end
    assert warmup_iterations(5, 0) == 1


def test_the_table_spreads_rows_over_the_run_and_marks_the_end_of_the_warm_up():
    samples = _series(n=201)
    table = SampleTable(MAX_ITER, 250)
    lines = [SampleTable.HEADER] + [line for s in samples for line in table.add(s)] + table.close()
    assert lines[0].split() == ["iter", "time", "s", "RSS", "MiB", "workers", "wRSS", "MiB", "fds", "threads"]
    iterations = [int(line.split()[0]) for line in lines[1:]]
    assert iterations == [0, 100, 200, 250, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert lines[4].endswith("<- warm-up over") and lines[4].split()[:7] == ["250", "50.0", "1000.0", "2", "900.0",
                                                                             "60", "10"]
    # the last sample gets a row even when it is not due; the rows come as the samples do
    table = SampleTable(MAX_ITER, 250)
    assert [len(table.add(s)) for s in samples[:3]] == [1, 0, 0] and table.close()[0].split()[0] == "10"
