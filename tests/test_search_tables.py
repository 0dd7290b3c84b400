"""Which table `find` prices with: this CPU by its full identity, at the threads it deploys at."""

import pytest
from conftest import tiny_model
from table_helpers import fake_table

from amoebasearch.errors import UsageError
from amoebasearch.models import model_signature
from amoebasearch.profile.fingerprint import cpu_fingerprint, cpu_identity, same_cpu
from amoebasearch.profile.table import load_table, table_name
from amoebasearch.search.tables import check_table_threads, choose_table

EPYC = {"kind": "cpu", "vendor": "AuthenticAMD", "family": "25", "model": "17", "stepping": "1", "name": "AMD EPYC"}


def test_cpus_are_told_apart_by_their_full_identity_not_their_name():
    assert same_cpu(EPYC, dict(EPYC, cores=64, threads_used=1))
    assert not same_cpu(EPYC, dict(EPYC, stepping="2"))  # same marketing name, another chip
    assert not same_cpu(EPYC, {"kind": "cpu", "name": "AMD EPYC"})  # an old table without the identity
    assert cpu_identity({"kind": "cuda", "name": "NVIDIA H200"}) is None
    here = cpu_fingerprint()
    assert cpu_identity(here) is None or same_cpu(here, cpu_fingerprint())


def test_a_cpu_table_names_its_thread_count():
    assert table_name("m", "cpu-amd-epyc", "eager", "float32", 2) == "m-cpu-amd-epyc-t2-eager-float32"
    assert table_name("m", "nvidia-h200", "cudagraph", "bfloat16") == "m-nvidia-h200-cudagraph-bfloat16"


def cpu_table(config, folder, device, threads, runtime="eager"):
    path = folder / f"{table_name('tiny', 'cpu-amd-epyc', runtime, 'float32', threads)}.csv"
    fake_table(config, "tiny", path)
    table = load_table(path)
    table.meta["device"] = dict(device, threads_used=threads)
    table.meta["settings"]["threads"] = threads
    return table.save(path)


def test_find_picks_this_cpus_table_at_the_deployment_threads(tmp_path):
    config = tiny_model("llama").config
    signature = model_signature(config)
    cpu_table(config, tmp_path, EPYC, 1)
    cpu_table(config, tmp_path, EPYC, 2)
    pick = lambda threads, device=EPYC: choose_table(  # noqa: E731
        tmp_path, signature, device, "cpu-amd-epyc", "eager", "tiny", "cpu", threads
    )
    assert pick(2).threads == 2 and pick(1).threads == 1
    with pytest.raises(UsageError, match=r"timed at 1 thread and 2 threads, not the 4 .* --threads 1"):
        pick(4)
    with pytest.raises(UsageError, match="no latency table"):  # one stepping apart: not this CPU's tables
        pick(2, dict(EPYC, stepping="2"))


def test_a_given_table_at_other_threads_is_refused_naming_the_flag(tmp_path):
    config = tiny_model("llama").config
    table = load_table(cpu_table(config, tmp_path, EPYC, 1))
    check_table_threads(table, 1, host_default=2, this_cpu=EPYC)  # asked for: fine
    with pytest.raises(UsageError, match="not --threads 2: pass --threads 1"):
        check_table_threads(table, 2, host_default=2, this_cpu=EPYC)
    with pytest.raises(UsageError, match="runs 2 by default: pass --threads 1"):
        check_table_threads(table, None, host_default=2, this_cpu=EPYC)
    check_table_threads(table, None, host_default=2, this_cpu=dict(EPYC, model="1"))  # another CPU's table
