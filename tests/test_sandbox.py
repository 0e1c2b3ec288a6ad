import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rewards.sandbox import Sandbox


# Targets must be importable module-level functions: the verifier processes import this module.
def work(kind: str, value: int = 0):
    if kind == "hang":
        while True:
            pass
    if kind == "crash":
        os._exit(3)
    if kind == "alloc":
        return len(bytearray(2**33))  # 8 GB: must hit the memory limit, not the machine
    if kind == "raise":
        raise ZeroDivisionError("boom")
    return value * 2


@pytest.fixture
def sandbox():
    with Sandbox(work, processes=2, timeout_s=0.5, memory_mb=1024) as box:
        yield box


def test_hangs_crashes_and_errors_cost_one_call_each_and_no_process(sandbox):
    calls = [("ok", 1), ("hang",), ("ok", 2), ("crash",), ("raise",), ("alloc",), ("hang",), ("ok", 3)]
    out = sandbox.map(calls)
    assert [o.value for o in out] == [2, None, 4, None, None, None, None, 6]
    assert [o.timed_out for o in out] == [False, True, False, False, False, False, True, False]
    assert out[3].crashed and "ZeroDivisionError" in out[4].error
    assert "MemoryError" in out[5].error
    assert all(o.seconds <= 0.5 * 1.5 for o in out)
    stats = sandbox.stats()
    assert stats["alive"] == 2 and stats["timeouts"] >= 2 and stats["crashes"] == 1
    assert sandbox.map([("ok", 5)] * 10)[-1].value == 10  # the replacements work


def test_works_off_the_main_thread(sandbox):
    # Where signal.alarm-based timeouts fail: a Ray actor method runs on a worker thread.
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=sandbox.map([("hang",), ("ok", 4)])))
    start = time.monotonic()
    thread.start()
    thread.join(10)
    assert [o.timed_out for o in result["out"]] == [True, False] and result["out"][1].value == 8
    assert time.monotonic() - start < 5



OWNER = """
import sys
from rewards.sandbox import Sandbox
from tests.test_sandbox import work
if __name__ == "__main__":
    box = Sandbox(work, processes=1, timeout_s=600)
    print(box.pids()[0], flush=True)
    box.map([("hang",)])
"""


def test_a_hung_worker_dies_with_its_killed_owner(tmp_path):
    # A Ray actor killed mid-check must not leave a verifier spinning on a core forever.
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    root = Path(__file__).resolve().parents[1]
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    worker = int(owner.stdout.readline())
    time.sleep(0.5)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    for _ in range(100):
        if not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the hung worker outlived its owner")
