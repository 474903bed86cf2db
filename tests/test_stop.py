"""exactpost.training.stop: the first SIGTERM/SIGINT is a request, a second one interrupts,
an ignored SIGINT stays ignored, and the previous handlers come back."""

from __future__ import annotations

import os
import signal

import pytest

from exactpost.training.stop import StopRequests, TrainingStopped


def test_first_signal_is_a_request_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread before the next bytecode
        assert stop.requested and stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # give the interpreter a few bytecodes to run the handler
                pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_ignored_sigint_stays_ignored_and_sigint_is_a_request_otherwise():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequests() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested and stop.name == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_training_stopped_exit_code_follows_the_shell_convention():
    exc = TrainingStopped("stopped", signal.SIGTERM)
    assert isinstance(exc, KeyboardInterrupt) and exc.exit_code == 143 and str(exc) == "stopped"
