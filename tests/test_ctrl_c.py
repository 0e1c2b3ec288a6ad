"""Ctrl-C ends the main job even when a library on the path swallows the KeyboardInterrupt."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

SWALLOWS = """
import subprocess, sys, time
from cli.train import stop_after_ctrl_c
stop_after_ctrl_c(lambda: print("continue with: --resume", file=sys.stderr, flush=True), grace_s=1.0)
child = subprocess.Popen(["sleep", "60"])
# The one Ctrl-C may land anywhere after the pid is printed: everything from there on swallows it.
try:
    print(child.pid, flush=True)
    while True:
        time.sleep(0.1)
except BaseException:
    pass  # what some libraries do
while True:
    time.sleep(0.1)
"""


def test_a_swallowed_ctrl_c_still_ends_the_job_and_its_children():
    proc = subprocess.Popen([sys.executable, "-c", SWALLOWS], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert time.monotonic() - sent < 10
    assert "continue with: --resume" in proc.stderr.read()
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
