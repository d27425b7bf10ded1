"""``flap-sam bench`` runs end to end on the test-size model (the numbers are the bench's business, not a test's)."""

from __future__ import annotations

import json

import pytest

from flap_sam.cli.main import main

SMALL = ["--model", "vit_test", "--image-size", "64", "--rank", "4", "--presets", "fft", "flap", "--sites", "2"]


def test_bench_prints_its_tables_with_the_transport_error(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", *SMALL, "--no-speed", "--no-validation", "--no-site-memory", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## Transport error against fp32" in text and "| int8 per-tensor |" in text
    assert "int8 transport: relative RMS error <= 1 % of the fp32 adapter" in text
    assert out.read_text().count("## ") == 4


@pytest.mark.slow
def test_bench_json_holds_every_measured_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLAP_SAM_DEMO_ROOT", str(tmp_path / "demo"))
    report_path = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                *SMALL,
                "--steps",
                "1",
                "--validation-train-steps",
                "5",
                "--validation-volumes",
                "2",
                "--site-volumes",
                "3",
                "--site-shape",
                "96",
                "96",
                "12",
                "--json",
                str(report_path),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    for preset in ("fft", "flap"):
        figures = report["presets"][preset]
        assert figures["step_s"] > 0 and figures["peak_bytes"] > 0 and figures["wire_bytes"] > 0
    assert report["presets"]["flap"]["wire_bytes"] < report["presets"]["fft"]["wire_bytes"] / 10
    assert set(report["validation"]) >= {"overlap_s_per_volume", "single_s_per_volume", "dice_overlap", "dice_single"}
    assert report["validation"]["dice_volumes"] == 2 and 0 <= report["validation"]["dice_single"] <= 1
    assert set(report["attention"]) == {"reference_step_s", "fused_step_s", "reference_peak_bytes", "fused_peak_bytes"}
    assert report["site_memory"]["volumes"] == 3 and report["site_memory"]["peak_rss_bytes"] > report["site_memory"]["prepared_bytes"] > 0
    assert set(report["checkpointing"]) == {"off_step_s", "encoder_step_s", "off_peak_bytes", "encoder_peak_bytes"}
    # The tables show the same figures the JSON holds.
    wire_mb = report["presets"]["flap"]["wire_bytes"] / 1e6
    assert f"| flap | {report['presets']['flap']['params']:,} |" in text and f"{wire_mb:.2f}" in text
    assert any(t["target"].startswith("flap with checkpointing peak memory") for t in report["targets"])


def test_the_aggregation_growth_table_has_a_row_per_site_count_and_a_column_per_rule(tmp_path, capsys):
    """``--sites 2 4``: every rule timed at each count; the bytes the server receives grow exactly linearly."""
    from flap_sam.benchmark.payloads import AGGREGATION_RULES

    report_path = tmp_path / "bench.json"
    args = ["bench", *SMALL[:-1], "4", "2", "--no-speed", "--no-validation", "--no-site-memory", "--json", str(report_path)]
    assert main(args) == 0
    text = capsys.readouterr().out
    growth = json.loads(report_path.read_text())["aggregation"]["growth"]
    assert [row["sites"] for row in growth] == [2, 4]
    assert all(row[rule] > 0 for row in growth for rule in AGGREGATION_RULES)
    assert growth[1]["received_bytes"] == 2 * growth[0]["received_bytes"]
    header = "| sites | MB received | " + " | ".join(AGGREGATION_RULES) + " |"
    assert header in text and "| growth exponent (1 = linear) | 1.00 |" in text


def test_the_growth_exponent_reads_linear_and_quadratic_growth():
    from flap_sam.benchmark.payloads import growth_exponent

    rows = [{"sites": n, "linear": 0.01 * n, "quadratic": 0.001 * n * n} for n in (2, 4, 8, 16, 32)]
    assert growth_exponent(rows, "linear") == pytest.approx(1.0) and growth_exponent(rows, "quadratic") == pytest.approx(2.0)
    assert growth_exponent(rows[:1], "linear") is None
