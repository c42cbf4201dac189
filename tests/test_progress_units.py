"""sidecar/progress.py off a terminal: the periodic line, its ETA and the summary (a fake clock)."""

import logging

from sidecar.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_eta_follows_the_items_that_took_time_and_the_percent_is_floored(caplog):
    clock = FakeClock()
    log = logging.getLogger("progress-test")
    progress = Progress("backfill", 5000, log, every=10, bar=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="progress-test"):
        progress.advance(4988, timed=False)  # reused results: instant
        assert progress.eta() is None  # nothing timed yet: no promise
        clock.now += 20
        progress.advance(1)  # one eval of 20 s, 11 left
        assert progress.line() == "backfill: 4989/5000 checkpoints (99%), 20s so far, ETA 3m40s"
        clock.now += 5
        progress.advance(1)  # a line at most every 10 s: not yet
        clock.now += 5
        progress.advance(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["backfill: 4989/5000 checkpoints (99%), 20s so far, ETA 3m40s",
                     "backfill: 4991/5000 checkpoints (99%), 30s so far, ETA 1m30s"]
    assert progress.close() == "backfill: 4991/5000 checkpoints in 30s"


def test_the_bar_moves_on_each_eval_after_a_burst_of_reused_results(monkeypatch):
    """tqdm, left to itself, learns from a burst of instant items to skip the next ~25 updates."""
    import io
    import time

    screen = io.StringIO()
    monkeypatch.setattr("sys.stderr", screen)
    progress = Progress("backfill", 45, logging.getLogger("progress-test"), bar=True)
    for _ in range(40):
        progress.advance(timed=False)
    time.sleep(0.6)  # past tqdm's shortest redraw interval (0.5 s); no timing is asserted
    progress.advance(1)
    assert "41/45" in screen.getvalue()
    drawn = len(screen.getvalue())
    time.sleep(0.6)
    progress.advance(0)  # the once-a-tick nudge while an eval runs: the clock moves on
    assert len(screen.getvalue()) > drawn
    progress.close()
    assert "41/45" in screen.getvalue().rsplit("\r", 1)[-1]
