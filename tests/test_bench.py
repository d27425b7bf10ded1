"""``flap-sam bench`` runs end to end on the test-size model (the numbers are the bench's business, not a test's)."""

from __future__ import annotations

from flap_sam.cli.main import main


def test_bench_prints_its_tables_with_the_transport_error(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", "--model", "vit_test", "--image-size", "64", "--rank", "4", "--no-speed",
                 "--presets", "fft", "flap", "--sites", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## Transport error against fp32" in text and "| int8 per-tensor |" in text
    assert "int8 transport: relative RMS error <= 1 % of the fp32 adapter" in text
    assert out.read_text().count("## ") == 4
