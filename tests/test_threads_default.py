"""How many workers encode() runs by default: the CPUs this process may use, not the machine's."""

import os

import pytest

import e5np
from e5np.runtime import available_cpus
from tests.checkpoints import TINY_DIR


def cgroup_tree(tmp_path, proc_lines, files):
    """A /proc/self/cgroup and a /sys/fs/cgroup holding the given files ({relative path: content})."""
    root = tmp_path / "sys-fs-cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    root.mkdir(exist_ok=True)
    (tmp_path / "cgroup").write_text("".join(line + "\n" for line in proc_lines))
    return {"cgroup_root": str(root), "proc_self_cgroup": str(tmp_path / "cgroup")}


@pytest.fixture(autouse=True)
def no_thread_budget(monkeypatch):
    """These tests set the affinity and the cgroups; a budget in the environment would cap them."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


V2 = ["0::/kubepods/pod1/container"]
V1 = ["4:memory:/docker/abc", "1:cpu,cpuacct:/docker/abc", "0::/"]


@pytest.mark.parametrize("proc_lines, files, expected", [
    (V2, {}, 8),                                                             # no cgroup files: the affinity
    (V2, {"kubepods/pod1/container/cpu.max": "max 100000\n"}, 8),            # no quota
    (V2, {"kubepods/pod1/container/cpu.max": "200000 100000\n"}, 2),         # --cpus=2
    (V2, {"kubepods/pod1/container/cpu.max": "150000 100000\n"}, 2),         # 1.5 CPUs: rounded up
    (V2, {"kubepods/pod1/container/cpu.max": "max 100000\n",                 # a limit on the pod, above it
          "kubepods/pod1/cpu.max": "100000 100000\n"}, 1),
    (V2, {"cpu.max": "300000 100000\n"}, 3),               # a container's own group mounted as the root
    (V2, {"kubepods/pod1/container/cpu.max": "6400000 100000\n"}, 8),       # a quota above the affinity
    (V1, {"cpu/docker/abc/cpu.cfs_quota_us": "-1\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}, 8),
    (V1, {"cpu/docker/abc/cpu.cfs_quota_us": "250000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}, 3),
    (V1, {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # (container's own mount)
    (V2, {"kubepods/pod1/container/cpu.max": "garbage\n"}, 8),
])
def test_cpus_are_the_affinity_capped_by_a_cgroup_quota(tmp_path, monkeypatch, proc_lines, files, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert available_cpus(**cgroup_tree(tmp_path, proc_lines, files)) == expected


def test_no_proc_self_cgroup_means_the_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cpus(cgroup_root=str(tmp_path), proc_self_cgroup=str(tmp_path / "absent")) == 3


@pytest.mark.parametrize("value, expected", [("1", 1), ("2", 2), ("4,2", 4), ("16", 8), ("0", 8), ("", 8),
                                             ("four", 8), ("-2", 8)])
def test_a_schedulers_thread_budget_caps_the_cpus(tmp_path, monkeypatch, value, expected):
    """Ray, Spark and Dask give a task or actor its CPUs in OMP_NUM_THREADS and leave its affinity the whole node's;
    a value that is not a positive count is no budget."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    paths = {"cgroup_root": str(tmp_path), "proc_self_cgroup": str(tmp_path / "absent")}
    assert available_cpus(**paths, environ={"OMP_NUM_THREADS": value}) == expected


def test_a_process_with_a_thread_budget_runs_that_many_workers():
    import subprocess
    import sys

    code = f"import e5np; print(e5np.load({str(TINY_DIR)!r}).threads)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.stdout == "1\n", result.stderr


def test_a_model_runs_one_worker_per_available_cpu(monkeypatch):
    """Under `taskset -c 0` os.cpu_count() still said every core of the machine."""
    monkeypatch.setattr(e5np.model, "available_cpus", lambda: 3)
    assert e5np.load(TINY_DIR).threads == 3
    assert e5np.load(TINY_DIR, threads=5).threads == 5


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_a_process_pinned_to_one_cpu_gets_one_worker():
    import subprocess
    import sys

    code = f"import os; os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}}); import e5np; " \
           f"print(e5np.load({str(TINY_DIR)!r}).threads)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout == "1\n", result.stderr
