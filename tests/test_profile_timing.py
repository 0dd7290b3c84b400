"""The timing harness on a fake clock: statistics, warm-up, interleaving, resets, CUDA skip."""

import pytest
import torch

from amoebasearch.profile import timing


class FakeClock(timing.Clock):
    """Each timed call 'takes' the next duration from a list (microseconds)."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.calls = 0

    def start(self):
        return None

    def stop(self, token):
        value = self.durations[self.calls]
        self.calls += 1
        return value


def test_summary_statistics_on_known_samples():
    stats = timing.summarize([float(v) for v in range(1, 22)])  # 1..21
    assert stats.median_us == 11
    assert stats.p10_us == pytest.approx(3.0)
    assert stats.p90_us == pytest.approx(19.0)
    assert stats.repeats == 21
    assert stats.noisy  # 19/3 > 1.05


def test_steady_timings_are_not_flagged():
    stats = timing.summarize([100.0] * 18 + [101.0, 102.0, 99.0])
    assert stats.median_us == 100.0
    assert not stats.noisy


def test_warmup_is_untimed_and_inputs_are_fresh():
    seen = []
    clock = FakeClock([10.0 + i for i in range(20)])
    counter = iter(range(1000))
    stats = timing.measure(seen.append, lambda: next(counter), clock=clock, warmup=3, repeats=20)
    assert clock.calls == 20  # warm-up calls were not timed
    assert len(seen) == 23 and len(set(seen)) == 23  # every call got a new input
    assert stats.median_us == pytest.approx(19.5)


def test_interleaving_alternates_programs_and_resets():
    order, resets = [], []
    clock = FakeClock([1.0, 2.0] * 20)
    programs = [
        (lambda x: order.append("a"), lambda: None, lambda: resets.append("a")),
        (lambda x: order.append("b"), lambda: None, None),
    ]
    stats = timing.measure_interleaved(programs, clock=clock, warmup=1, repeats=20)
    assert order[2:6] == ["a", "b", "a", "b"]
    assert len(resets) == 21
    assert [s.median_us for s in stats] == [1.0, 2.0]


def test_alternate_rounds_run_back_and_forth_and_keep_each_programs_samples():
    order = []

    class LastProgramClock(timing.Clock):
        """'Times' a call as the value of the program that just ran."""

        def start(self):
            return None

        def stop(self, token):
            return {"a": 1.0, "b": 2.0, "c": 3.0}[order[-1]]

    programs = [(lambda x, name=name: order.append(name), lambda: None, None) for name in "abc"]
    stats = timing.measure_interleaved(programs, clock=LastProgramClock(), warmup=0, repeats=20, alternate=True)
    assert "".join(order[:9]) == "abccbaabc"  # the widest never wraps round to the narrowest
    assert [s.median_us for s in stats] == [1.0, 2.0, 3.0]


def test_done_rounds_are_kept_and_only_the_rest_are_timed():
    order = []
    programs = [(lambda x, name=name: order.append(name), lambda: None, None) for name in "ab"]
    heard = []
    done = [[5.0] * 3, [6.0] * 3]  # three rounds a killed run finished
    samples = timing.sample_interleaved(
        programs,
        clock=FakeClock([1.0, 2.0] * 17),
        warmup=0,
        repeats=20,
        alternate=True,
        done=done,
        on_round=lambda s: heard.append(len(s[0])),
    )
    assert samples[0][:3] == [5.0] * 3 and len(samples[0]) == len(samples[1]) == 20
    assert heard == list(range(4, 21))  # told after every complete round
    assert "".join(order[:4]) == "baab"  # round 3 is odd: it runs backwards, as it would have
    assert done == [[5.0] * 3, [6.0] * 3]  # the caller's lists are not grown in place
    with pytest.raises(ValueError, match="complete rounds"):
        timing.sample_interleaved(programs, warmup=0, repeats=20, done=[[1.0], []])
    with pytest.raises(ValueError, match="more than the 20"):
        timing.sample_interleaved(programs, warmup=0, repeats=20, done=[[1.0] * 21, [1.0] * 21])


def test_too_few_repeats_is_refused():
    with pytest.raises(ValueError, match="at least 20"):
        timing.measure(lambda x: None, lambda: None, repeats=5)


def test_cpu_clock_measures_real_time():
    stats = timing.measure(lambda x: sum(range(1000)), lambda: None, repeats=20)
    assert stats.median_us > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_event_clock_times_gpu_work():
    x = torch.randn(1024, 1024, device="cuda")
    stats = timing.measure(lambda a: a @ a, lambda: x, clock=timing.clock_for("cuda:0"), repeats=20)
    assert stats.median_us > 0


def test_clock_choice_follows_the_device():
    assert type(timing.clock_for("cpu")) is timing.Clock
    assert isinstance(timing.clock_for("cuda:0"), timing.CudaClock)  # constructing it needs no GPU


def test_instances_combine_by_median_and_report_their_spread():
    fast, usual, unlucky = (timing.Stats(m, m - 1, m + 1, 21) for m in (100.0, 102.0, 125.0))
    combined = timing.median_of_instances([unlucky, fast, usual])
    assert (combined.median_us, combined.p10_us, combined.p90_us, combined.repeats) == (102.0, 101.0, 103.0, 63)
    assert timing.instance_spread([unlucky, fast, usual]) == pytest.approx(1.25)
    with pytest.raises(ValueError):
        timing.median_of_instances([])


def test_garbage_collector_is_off_while_timing_and_restored_after():
    import gc

    states = []
    programs = [(lambda x: states.append(gc.isenabled()), lambda: None, None)]
    timing.measure_interleaved(programs, clock=FakeClock([1.0] * 20), warmup=0, repeats=20)
    assert states == [False] * 20
    assert gc.isenabled()

    def failing(x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        timing.measure_interleaved([(failing, lambda: None, None)], clock=FakeClock([1.0] * 20), warmup=0, repeats=20)
    assert gc.isenabled()


def test_huge_pages_are_named_in_the_allocation_policy_only_when_glibc_is_asked_for_them():
    assert timing.huge_page_policy({}) == ""
    assert timing.huge_page_policy({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == ""
    assert timing.huge_page_policy({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=1"}) == ""
    both = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=1:glibc.malloc.hugetlb=1"}
    assert timing.huge_page_policy(both) == "; huge pages (glibc.malloc.hugetlb=1)"


def test_a_table_s_allocation_policy_is_taken_before_measuring_against_it():
    """find --verify measures under the policy the table records (settings.malloc), or changes nothing."""
    assert timing.same_malloc_policy(None).startswith("default")
    assert timing.same_malloc_policy("default").startswith("default")
    taken = timing.same_malloc_policy("glibc mmap/trim thresholds fixed at 131072 bytes")
    assert taken.startswith("glibc mmap/trim thresholds fixed at 131072 bytes") or taken.startswith("default")


def test_min_seconds_stretches_short_rounds_only():
    """A program of about a millisecond gets rounds enough to fill the time asked for (capped at ten
    times the repeats); a round already that long keeps the repeats asked for."""
    import time as clock

    from amoebasearch.profile.timing import sample_interleaved

    short = (lambda _: clock.sleep(0.001), lambda: None, None)
    samples = sample_interleaved([short], repeats=20, min_seconds=0.1)
    assert 40 <= len(samples[0]) <= 200
    assert len(sample_interleaved([short], repeats=20, min_seconds=5.0)[0]) == 200  # the cap
    assert len(sample_interleaved([short], repeats=20)[0]) == 20
