"""The shadow log (bounded, shared by replicas) and the report read from it."""

import math
import sqlite3

import pytest

from gateway.cli import main
from gateway.shadow import DiffLog, Sample
from gateway.shadow_report import format_table, read_rows, summarize, write_report


def sample(i: int, shadow: str = "int8", **fields) -> Sample:
    compared = {"outcome": "agree", "top1_same": True, "overlap": 1.0, "max_delta": 0.01, "latency_delta_ms": float(i)}
    return Sample(shadow=shadow, at=1_700_000_000.0 + i, request_id=f"r{i}", tier="standard", **{**compared, **fields})


def written(path, samples, max_rows: int = 1000) -> None:
    log = DiffLog(path, max_rows)
    for one in samples:
        log.append(one)
    log.close()


def test_the_log_keeps_only_the_newest_rows(tmp_path):
    path = tmp_path / "shadow.sqlite"
    written(path, [sample(i) for i in range(25)], max_rows=10)
    written(path, [sample(i) for i in range(25, 28)], max_rows=10)
    with sqlite3.connect(path) as connection:
        ids = [row[0] for row in connection.execute("SELECT request_id FROM shadow_samples ORDER BY id")]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ids == [f"r{i}" for i in range(18, 28)]


def test_replicas_share_one_log(tmp_path):
    path = tmp_path / "shadow.sqlite"
    replicas = [DiffLog(path, 10_000) for _ in range(3)]
    for i in range(300):
        replicas[i % 3].append(sample(i))
    for replica in replicas:
        replica.close()
    assert len(read_rows(path)) == 300


def test_summary_of_agreement_overlap_latency_and_errors(tmp_path):
    path = tmp_path / "shadow.sqlite"
    rows = [sample(i) for i in range(1, 97)]  # latency deltas 1..96 ms
    rows += [sample(i, outcome="disagree", top1_same=False, overlap=0.6, latency_delta_ms=100.0) for i in range(97, 101)]
    rows += [sample(i, outcome="error", top1_same=None, overlap=None, max_delta=None, latency_delta_ms=None,
                    error="timeout") for i in range(101, 103)]
    rows += [sample(i, shadow="same") for i in range(5)]
    written(path, rows)
    int8, same = summarize(read_rows(path))
    assert (int8.shadow, int8.mirrored, int8.compared, int8.errors, int8.disagreements) == ("int8", 102, 100, 2, 4)
    assert int8.top1_agreement == pytest.approx(0.96)
    assert int8.mean_overlap == pytest.approx((96 + 4 * 0.6) / 100)
    assert (int8.latency_delta_p50_ms, int8.latency_delta_p99_ms) == (50.0, 100.0)
    assert (same.shadow, same.mirrored, same.top1_agreement) == ("same", 5, 1.0)
    (only,) = summarize(read_rows(path, "same"))
    assert only.shadow == "same"


def test_a_test_whose_samples_all_failed_reports_no_agreement(tmp_path):
    path = tmp_path / "shadow.sqlite"
    written(path, [sample(0, outcome="error", top1_same=None, overlap=None, latency_delta_ms=None, error="unreachable")])
    (dead,) = summarize(read_rows(path))
    assert (dead.mirrored, dead.errors) == (1, 1)
    assert math.isnan(dead.top1_agreement) and math.isnan(dead.latency_delta_p50_ms)
    assert format_table([dead]).splitlines()[2].split() == ["int8", "1", "1", "-", "0", "0", "-", "-", "-"]


def test_cli_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    path = tmp_path / "shadow.sqlite"
    written(path, [sample(i) for i in range(50)] + [sample(i, shadow="other", top1_same=i % 2 == 0) for i in range(50)])
    assert main(["shadow", "report", "--log", str(path)]) == 0
    out = capsys.readouterr().out
    header, _rule, *lines = out.split("\n\n")[0].splitlines()
    assert header.split()[:3] == ["shadow", "mirrored", "errors"]
    assert [line.split()[:4] for line in lines] == [["int8", "50", "0", "100.0%"], ["other", "50", "0", "50.0%"]]
    png = tmp_path / "shadow-report-all.png"
    assert f"plot: {png}" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    assert main(["shadow", "report", "other", "--log", str(path), "--plot", str(tmp_path / "o.png")]) == 0
    assert "int8" not in capsys.readouterr().out and (tmp_path / "o.png").exists()


def test_cli_explains_a_missing_or_empty_log(tmp_path, capsys):
    assert main(["shadow", "report", "--log", str(tmp_path / "none.sqlite")]) == 1
    assert "no shadow log at" in capsys.readouterr().err
    written(tmp_path / "shadow.sqlite", [sample(0)])
    assert main(["shadow", "report", "nosuchtest", "--log", str(tmp_path / "shadow.sqlite")]) == 1
    assert "no samples of shadow test 'nosuchtest'" in capsys.readouterr().err


def test_write_report_names_the_default_plot_after_the_test(tmp_path):
    path = tmp_path / "shadow.sqlite"
    written(path, [sample(0)])
    assert write_report(path, "int8", None).endswith(str(tmp_path / "shadow-report-int8.png"))
