"""The stop flag: each stop signal only sets it, the first one wins, handlers are restored.

The whole path (a real worker process signalled mid-training, exit 75, exact resume) is
tests/test_resume.py::test_each_stop_signal_checkpoints_and_exits_75.
"""

from __future__ import annotations

import os
import signal

import pytest

from hpcxfer.worker.signals import STOP_SIGNALS, StopFlag


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_a_stop_signal_sets_the_flag_and_nothing_else(sig):
    before = signal.getsignal(sig)
    with StopFlag() as stop:
        assert not stop
        os.kill(os.getpid(), sig)  # delivered before kill() returns for a signal to oneself
        assert stop and stop.signum == sig
        os.kill(os.getpid(), signal.SIGUSR1 if sig != signal.SIGUSR1 else signal.SIGUSR2)
        assert stop.signum == sig  # the first request is the one reported
    assert signal.getsignal(sig) == before
