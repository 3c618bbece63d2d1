"""The pauses of the web workers' paced import of nginx's log (portal/analytics/pacing.py),
against CPU counters written to a file in /proc/stat's format."""

from __future__ import annotations

from portal.analytics import pacing


def counters(path, idle: int, other: int) -> None:
    path.write_text(f"cpu  {other} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")


def test_pauses_only_while_the_cpus_are_busy(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    monkeypatch.setattr(pacing, "PROC_STAT", str(stat))
    counters(stat, idle=1000, other=1000)
    pacer = pacing.Pacer(0.25, cpus=2)  # busy: less than an eighth of all CPU time idle
    counters(stat, idle=1005, other=1095)  # 5 % idle
    assert pacer.pause(0.05) == 0.05 * 3
    counters(stat, idle=1020, other=1180)  # 15 % idle (more than a quarter of one CPU of two)
    assert pacer.pause(0.05) == 0
    counters(stat, idle=1020, other=1180)  # no time passed: unknown, counts as busy
    assert pacer.pause(0.1) == 0.1 * 3
    counters(stat, idle=1032, other=1268)  # 12 %
    assert pacer.pause(0.02) == 0.02 * 3
    counters(stat, idle=1032, other=1368)
    assert pacer.pause(60.0) == pacing.MAX_PAUSE  # a step held up: not minutes of pause


def test_full_share_never_pauses_and_no_counters_means_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(pacing, "PROC_STAT", str(tmp_path / "missing"))
    assert pacing.cpu_times() is None
    assert pacing.Pacer(1.0).pause(1.0) == 0
    assert pacing.Pacer(0.5, cpus=4).pause(1.0) == 1.0
    (tmp_path / "garbage").write_text("cpu  a b c\n")
    assert pacing.cpu_times(str(tmp_path / "garbage")) is None


def test_reads_this_machine():
    idle, total = pacing.cpu_times()
    assert 0 <= idle <= total
