"""What ``resume_from`` accepts and refuses, on adapter files written in FLARE's persisted format.

The end-to-end resumes run in test_simulator.py (simulator) and test_deployment.py (a POC
server killed and restarted).
"""

from __future__ import annotations

import pytest
import torch

from flap_sam.federated.adapter_model import AdapterModel
from flap_sam.federated.resume import (
    FINISHED_ROUNDS_KEY,
    check_resumable,
    check_same_adapter,
    read_adapter,
    resume_checkpoint,
    run_adapter_path,
)

MODEL = {"model_type": "vit_test", "image_size": 64, "rank": 4}


def _persist(path, state, rounds=None):
    """An adapter file as FLARE's PTFileModelPersistor writes it (with AdapterPersistor's round count)."""
    saved = {"model": state, "train_conf": {"train": {"model": "AdapterModel"}}}
    if rounds is not None:
        saved["meta_props"] = {FINISHED_ROUNDS_KEY: rounds}
    torch.save(saved, path)
    return str(path)


@pytest.fixture(scope="module")
def adapter():
    return AdapterModel(MODEL).state_dict()


def test_a_job_id_points_into_the_servers_run_folder(tmp_path, adapter):
    path = run_adapter_path(str(tmp_path), "0adf0d42-9e18")
    (tmp_path / "0adf0d42-9e18" / "app_server").mkdir(parents=True)
    _persist(path, adapter, rounds=2)
    assert resume_checkpoint("0adf0d42-9e18", str(tmp_path), "FL_global_model.pt") == path
    assert check_resumable(path, adapter, num_rounds=5) == 2
    state, rounds = read_adapter(path)
    assert rounds == 2 and set(state) == set(adapter)


@pytest.mark.parametrize(
    "resume_from, message",
    [
        ("../other_server/job", "expected a job id of this server or an absolute path"),
        ("no-such-job", "resume_from no-such-job: no persisted adapter at"),
    ],
)
def test_nothing_to_resume_from_is_one_line_naming_the_setting(tmp_path, resume_from, message):
    with pytest.raises(ValueError, match=message):
        resume_checkpoint(resume_from, str(tmp_path), "FL_global_model.pt")


def test_an_adapter_of_other_settings_is_refused(tmp_path, adapter):
    other = AdapterModel({**MODEL, "rank": 8}).state_dict()
    path = _persist(tmp_path / "other.pt", other, rounds=2)
    with pytest.raises(ValueError, match=r"holds another adapter than this job's \(\d+ tensor\(s\) differ, e.g. image_encoder"):
        check_resumable(path, adapter, num_rounds=5)


def test_an_adapter_without_rounds_or_with_all_rounds_is_refused(tmp_path, adapter):
    with pytest.raises(ValueError, match="records no finished round"):
        check_resumable(_persist(tmp_path / "plain.pt", adapter), adapter, num_rounds=5)
    with pytest.raises(ValueError, match=r"already holds all 5 round\(s\) \(num_rounds = 5\)"):
        check_resumable(_persist(tmp_path / "done.pt", adapter, rounds=5), adapter, num_rounds=5)


def test_a_save_that_dies_midway_leaves_the_last_adapter_whole(tmp_path, monkeypatch):
    """AdapterPersistor on FLARE's atomic writer: a crash while writing round 2 keeps round 1's file."""
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants

    from flap_sam.federated.resume import AdapterPersistor

    persistor = AdapterPersistor(model={"path": "flap_sam.federated.adapter_model.AdapterModel", "args": {"spec": MODEL}}, num_rounds=5)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path), private=True, sticky=False)
    persistor.handle_event(EventType.START_RUN, fl_ctx)
    model = persistor.load_model(fl_ctx)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    persistor.save_model(model, fl_ctx)
    path = str(tmp_path / "FL_global_model.pt")
    assert read_adapter(path)[1] == 1

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 1, private=True, sticky=False)
    with pytest.raises(OSError, match="disk full"):
        persistor.save_model(model, fl_ctx)
    monkeypatch.undo()
    state, rounds = read_adapter(path)
    assert rounds == 1 and set(state) == set(AdapterModel(MODEL).state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FL_global_model.pt"]  # no temporary file left behind


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_an_unreadable_resume_file_is_one_line_naming_it(tmp_path, adapter, content):
    path = tmp_path / "FL_global_model.pt"
    if content is None:  # a real adapter file cut off mid-write
        _persist(path, adapter, rounds=2)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: cannot be read as a persisted adapter"):
        check_resumable(str(path), adapter, num_rounds=5)


def test_an_adapter_trained_from_another_base_is_refused(tmp_path, adapter):
    from flap_sam.model.adapter_file import FINGERPRINT_KEY

    path = tmp_path / "other_base.pt"
    torch.save(
        {
            "model": adapter,
            "meta_props": {FINISHED_ROUNDS_KEY: 2, FINGERPRINT_KEY: {"source": "checkpoint", "frozen": "a", "exchanged": "b"}},
        },
        path,
    )
    server_base = AdapterModel(MODEL).base_fingerprint
    with pytest.raises(ValueError, match=r"was trained from another SAM base \(checkpoint\) than this server built \(random\)"):
        check_resumable(str(path), adapter, num_rounds=5, base=server_base)
    assert check_resumable(str(path), adapter, num_rounds=5) == 2  # without a base to compare: the old check only


def test_start_from_takes_a_finished_adapter_of_this_job_whatever_its_rounds_and_names_itself(tmp_path, adapter):
    """``start_from``: the same checks of the adapter as ``resume_from`` except the rounds (a finished job holds all
    of them); a job id whose run folder FLARE moved away gets the way to hand the file over."""
    finished = _persist(tmp_path / "finished.pt", adapter, rounds=5)
    assert check_same_adapter(finished, adapter, setting="start_from")[FINISHED_ROUNDS_KEY] == 5
    other = _persist(tmp_path / "other.pt", AdapterModel({**MODEL, "rank": 8}).state_dict(), rounds=5)
    with pytest.raises(ValueError, match=r"^start_from .*other.pt: holds another adapter than this job's"):
        check_same_adapter(other, adapter, setting="start_from")
    with pytest.raises(ValueError, match=r"^start_from 0adf0d42: no persisted adapter at .*download the job's result"):
        resume_checkpoint("0adf0d42", str(tmp_path), "FL_global_model.pt", "start_from")
