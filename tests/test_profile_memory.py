"""The memory guard: a group that would exhaust the machine stops with a one-line error before
any timing, instead of being killed by the kernel."""

import pytest

from amoebasearch.cli import main
from amoebasearch.errors import UsageError
from amoebasearch.profile import memory

GIB = 1 << 30


def test_meminfo_reads_total_and_available():
    info = memory.meminfo()
    if not memory.MEMINFO.is_file():
        assert info == {}
    else:
        assert 0 < info["MemAvailable"] <= info["MemTotal"]


def test_building_stops_once_available_memory_falls_under_the_floor():
    left = iter([8 * GIB, 4 * GIB, GIB // 2, GIB // 4])  # 16 GiB machine: the floor is 1 GiB
    read = lambda: {"MemTotal": 16 * GIB, "MemAvailable": next(left)}  # noqa: E731
    with pytest.raises(UsageError, match=r"0\.5 GiB left after 3 of them; lower --instances"):
        memory.build_within_memory(iter(range(4)), total=4, fix="lower --instances", read=read)
    plenty = lambda: {"MemTotal": 16 * GIB, "MemAvailable": 8 * GIB}  # noqa: E731
    assert memory.build_within_memory(iter(range(4)), total=4, fix="", read=plenty) == [0, 1, 2, 3]
    assert memory.build_within_memory(iter(range(2)), total=2, fix="", read=dict) == [0, 1]  # no /proc: no guard


def test_profile_says_in_one_line_when_a_group_would_not_fit(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(memory, "meminfo", lambda: {"MemTotal": 16 * GIB, "MemAvailable": GIB // 2})
    capsys.readouterr()
    argv = ["profile", "--model", str(tiny_checkpoint), "--out", str(tmp_path), "--context", "8", "--instances", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("amoebasearch")]  # not the progress bars
    assert "Traceback" not in err and len(errors) == 1 and "lower --instances (now 4)" in errors[0]
