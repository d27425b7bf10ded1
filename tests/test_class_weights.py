"""``class_weights``: a class's weight in the loss, checked when the job is written and used by the site's loss."""

from __future__ import annotations

import re

import pytest
import torch

from flap_sam.cli.main import main
from flap_sam.jobs.settings import check_settings, training_settings
from flap_sam.jobs.writer import read_job
from flap_sam.training.local_trainer import LocalTrainer

CT_CLASSES = ("lung", "vertebrae", "ribs")


def test_the_weights_follow_the_tasks_class_order_with_the_background_first():
    kits = ("kidney", "tumour")  # the package default task's classes
    assert training_settings(class_weights={"tumour": 3, "kidney": 0.5}).loss_weights(kits) == [1.0, 0.5, 3.0]
    assert training_settings(class_weights={"tumour": 3}).loss_weights(("tumour", "kidney")) == [1.0, 3.0, 1.0]
    assert training_settings().loss_weights(CT_CLASSES) is None  # every weight 1: MONAI's unweighted loss
    assert training_settings(class_weights={"tumour": 1}).loss_weights(kits) is None


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"ribs": 0}, "class_weights: the weight of ribs: 0 must be a number above 0"),
        ({"ribs": "heavy"}, "class_weights: the weight of ribs: 'heavy' is not a number"),
        ({"ribs": float("nan")}, "class_weights: the weight of ribs: nan must be a number above 0"),
    ],
)
def test_a_weight_that_is_not_a_number_above_0_is_refused(weights, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_settings({"class_weights": weights})


def test_a_class_the_task_lacks_is_refused_when_the_job_is_written(tmp_path, capsys):
    assert main(["job", "kits_lora", "--out", str(tmp_path / "job"), "--set", 'class_weights={"ribs": 3}']) != 0
    assert "class_weights: no class ribs in this task (classes: kidney, tumour)" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_a_weighted_class_costs_more_when_it_is_missed(tmp_path):
    assert main(["job", "kits_lora", "--out", str(tmp_path / "job"), "--set", 'class_weights={"tumour": 4}']) == 0
    job = read_job(str(tmp_path / "job"))
    weights = job.training.loss_weights(job.spec.task.class_names)
    assert weights == [1.0, 1.0, 4.0]
    model = torch.nn.Conv2d(3, 3, 1)
    weighted, plain = (LocalTrainer(model, [], job.training, torch.device("cpu"), loss_weights=w).loss_fn for w in (weights, None))
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    labels[:, :, :4] = 1
    labels[:, :, 4:, :4] = 2  # tumour
    right = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float() * 20
    tumour_missed = right.clone()
    tumour_missed[:, 2], tumour_missed[:, 0] = right[:, 0], right[:, 2]  # tumour called background, and back
    assert float(weighted(right, labels)) == pytest.approx(float(plain(right, labels)), abs=1e-3)  # nothing missed: no cost
    assert float(weighted(tumour_missed, labels)) > 1.2 * float(plain(tumour_missed, labels))
