"""FedProx on the site: the proximal term keeps local training closer to the global model."""

from __future__ import annotations

import torch

from flap_sam.jobs.settings import training_settings
from flap_sam.model.factory import ModelSpec, build_model
from flap_sam.training.local_trainer import LocalTrainer

SPEC = ModelSpec("vit_test", 64, 2, "flap", 4)


def _distance_after_training(mu: float) -> float:
    torch.manual_seed(0)
    model = build_model(SPEC)
    trainer = LocalTrainer(model, [], training_settings(lr=0.05, batch_size=2, warmup_steps=0, fedprox_mu=mu), torch.device("cpu"))
    start = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    trainer.start_round()
    g = torch.Generator().manual_seed(1)
    stacks, labels = torch.rand(2, 5, 64, 64, generator=g), torch.randint(0, 3, (2, 5, 64, 64), generator=g)
    for _ in range(5):
        trainer.step(stacks, labels)
    moved = [p.detach() for p in model.parameters() if p.requires_grad]
    return float(sum(((a - b) ** 2).sum() for a, b in zip(moved, start)))


def test_proximal_term_shrinks_the_local_drift():
    assert _distance_after_training(mu=50.0) < 0.8 * _distance_after_training(mu=0.0)
