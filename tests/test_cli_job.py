"""``flap-sam job``: a shipped job copied with settings changed, resolved the way FLARE reads it."""

from __future__ import annotations

import json

from flap_sam.jobs.writer import job_settings
from flap_sam.cli.main import main


def test_job_copy_resolves_the_new_settings_on_both_sides(tmp_path, capsys):
    out = tmp_path / "kits_lora_dec"
    assert main(["job", "kits_lora", "--out", str(out), "--set", "preset=lora_dec", "num_rounds=25", "min_clients=6", "data_root=/data/fed_kits"]) == 0
    settings = job_settings(str(out))
    assert (settings["preset"], settings["num_rounds"], settings["data_root"], settings["dataset"]) == ("lora_dec", 25, "/data/fed_kits", "kits")
    assert json.loads((out / "meta.json").read_text())["min_clients"] == 6


def test_job_copy_refuses_an_unknown_setting(tmp_path, capsys):
    assert main(["job", "ixi_lora", "--out", str(tmp_path / "x"), "--set", "presett=flap"]) == 2
    assert "no setting presett" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
