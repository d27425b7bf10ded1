"""The site side of the federation: an NVFlare ``Learner`` run by ``LearnerExecutor``."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.learner_spec import Learner
from nvflare.app_common.app_constant import AppConstants, ValidateType

from flap_sam.data.profiles import get_profile
from flap_sam.data.site import SiteData
from flap_sam.data.stacks import SliceStackDataset, build_augmentation
from flap_sam.federated.site_errors import SITE_ERROR_HEADER, SITE_ERROR_KINDS, site_error_kind
from flap_sam.federated.weights import export_weights, import_weights
from flap_sam.model.factory import build_model, job_model_spec, resolve_checkpoint
from flap_sam.model.presets import exchanged_names
from flap_sam.training.device import pick_device
from flap_sam.training.local_trainer import LocalTrainer, TrainSettings, evaluate_volumes

SITE_SETTINGS_FILE = "flap_sam_site.json"

SITE_SETTING_KEYS = ("data_root", "datalist", "checkpoint", "device")


class FlapSamLearner(Learner):
    """Fine-tunes LoRA-SAM slice by slice on the site's 3D volumes and returns only the preset's tensors.

    Built once per run (``initialize``): the base SAM (optionally from a site-local official
    checkpoint), the site's checked data, the optimiser. Each round: load the global adapter,
    validate it (reported as initial metrics for model selection), train local steps, send the
    preset's tensors with the number of steps.

    Site-specific settings (``data_root``, ``datalist``, ``checkpoint``, ``device``) may be
    overridden by the site in ``<workspace>/local/flap_sam_site.json``, so one job serves every site.
    """

    def __init__(
        self,
        model_type: str = "vit_b",
        image_size: int = 224,
        preset: str = "flap",
        rank: int = 32,
        lora_scale: float = 1.0,
        checkpoint: str = "",
        dataset: str = "kits",
        data_root: str = "demo",
        datalist: str = "",
        device: str = "auto",
        local_epochs: float = 1.0,
        max_steps_per_round: int = 0,
        batch_size: int = 24,
        lr: float = 8e-4,
        weight_decay: float = 0.1,
        warmup_steps: int = 250,
        poly_power: float = 7.0,
        foreground_fraction: float = 0.5,
        augment: bool = True,
        amp: bool = True,
        seed: int = 0,
        fedprox_mu: float = 0.0,
        analytic_sender_id: str = "analytic_sender",
    ) -> None:
        super().__init__()
        self.profile = get_profile(dataset)
        self.spec = job_model_spec(model_type, image_size, dataset, preset, rank, lora_scale)
        self.site_settings = {"data_root": data_root, "datalist": datalist, "checkpoint": checkpoint, "device": device}
        self.local_epochs = local_epochs
        self.max_steps_per_round = max_steps_per_round
        self.augment = augment
        self.train_settings = TrainSettings(lr, weight_decay, batch_size, warmup_steps, poly_power, foreground_fraction, amp, seed, fedprox_mu)
        self.analytic_sender_id = analytic_sender_id
        self.model = None
        self.local_weights: dict[str, np.ndarray] | None = None
        self._aborted = False
        self._setup_error: Exception | None = None
        self.writer = None

    # ---- start-up -------------------------------------------------------------------------
    def _apply_site_overrides(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
        if workspace is None:
            return
        path = workspace.get_file_path_in_site_config(SITE_SETTINGS_FILE)
        if not os.path.isfile(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                overrides = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"site settings {path}: not valid JSON ({e})") from None
        unknown = set(overrides) - set(SITE_SETTING_KEYS)
        if unknown:
            raise ValueError(f"site settings {path}: unknown keys {sorted(unknown)}; allowed: {list(SITE_SETTING_KEYS)}")
        self.site_settings.update(overrides)
        self.log_info(fl_ctx, f"site settings from {path}: {sorted(overrides)}")

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        # Check data and checkpoint when the run starts, not when the first task arrives.
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)

    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        self.writer = parts.get(self.analytic_sender_id)
        self._start(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        """Set up once; a failure is kept (tasks are then refused) and logged here, on the site."""
        if self.model is not None or self._setup_error is not None:
            return
        try:
            self._setup(fl_ctx)
        except Exception as e:
            self._setup_error = e
            self.log_error(fl_ctx, f"site {fl_ctx.get_identity_name()} cannot start: {e}")

    def _failed_start_reply(self, fl_ctx: FLContext) -> Shareable:
        """The reply to every task of a site that could not start: an error with its category only."""
        kind = site_error_kind(self._setup_error)
        self.log_error(fl_ctx, f"refusing the task: this site could not start ({SITE_ERROR_KINDS[kind]}); fix it and restart the job")
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(SITE_ERROR_HEADER, kind)
        return reply

    def _setup(self, fl_ctx: FLContext) -> None:
        self.site_name = fl_ctx.get_identity_name()
        self._apply_site_overrides(fl_ctx)
        settings = self.site_settings
        self.device = pick_device(settings["device"])
        torch.manual_seed(self.train_settings.seed)
        self.data = SiteData.load(
            self.profile, settings["data_root"], self.site_name, self.spec.image_size, self.spec.num_classes, settings["datalist"] or None
        )
        self.model = build_model(self.spec, resolve_checkpoint(settings["checkpoint"]), self.device)
        self.exchanged = exchanged_names(self.model, self.spec.preset_obj)
        augment = build_augmentation(self.spec.image_size) if self.augment else None
        dataset = SliceStackDataset(self.data.train, augment, seed=self.train_settings.seed)
        self.trainer = LocalTrainer(self.model, dataset, self.train_settings, self.device)
        self.log_info(
            fl_ctx,
            f"{self.spec.model_type} preset={self.spec.preset} on {self.device}: {len(self.exchanged)} tensors, "
            f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} parameters train and are exchanged",
        )

    # ---- rounds ---------------------------------------------------------------------------
    def _load_global(self, shareable: Shareable, fl_ctx: FLContext) -> int:
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            raise ValueError(f"global model: expected WEIGHTS, got {dxo.data_kind}")
        import_weights(self.model, dxo.data, self.exchanged, "global model from the server")
        return int(shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0)

    def _steps_this_round(self) -> int:
        steps = max(1, round(self.local_epochs * self.trainer.steps_per_epoch()))
        return min(steps, self.max_steps_per_round) if self.max_steps_per_round > 0 else steps

    def _log(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), global_step=step)

    def train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self._setup_error is not None:
            return self._failed_start_reply(fl_ctx)
        try:
            current_round = self._load_global(shareable, fl_ctx)
        except ValueError as e:
            self.log_error(fl_ctx, str(e))
            return make_reply(ReturnCode.BAD_TASK_DATA)
        num_rounds = int(shareable.get_header(AppConstants.NUM_ROUNDS, 1) or 1)
        steps = self._steps_this_round()
        self._aborted = False
        done, loss = self.trainer.train(
            steps,
            total_steps=num_rounds * steps,
            round_seed=self.train_settings.seed * 100_003 + current_round,
            should_stop=lambda: abort_signal.triggered or self._aborted,
        )
        if abort_signal.triggered or self._aborted:
            return make_reply(ReturnCode.TASK_ABORTED)
        self._log("train_loss", loss, current_round)
        self._log("lr", self.trainer.optimizer.param_groups[0]["lr"], current_round)
        self.log_info(fl_ctx, f"round {current_round}: {done} local steps, mean loss {loss:.4f}")
        self.local_weights = export_weights(self.model, self.exchanged)
        # The round travels in the meta (LearnerExecutor rebuilds the Shareable, dropping headers).
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: done, AppConstants.CURRENT_ROUND: current_round}
        return DXO(DataKind.WEIGHTS, data=self.local_weights, meta=meta).to_shareable()

    def get_model_for_validation(self, model_name: str, fl_ctx: FLContext) -> Shareable:
        if model_name != "local" or self.local_weights is None:  # FLARE asks for the site's "local" model
            return make_reply(ReturnCode.EMPTY_RESULT)
        return DXO(DataKind.WEIGHTS, data=self.local_weights).to_shareable()

    def validate(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Score a global model sent by the server; only aggregate Dice values leave the site.

        * before local training (``BEFORE_TRAIN_VALIDATE``): the validation split, reported as
          the model-selection metric and to TensorBoard as ``val_dice`` / ``val_dice_<class>``;
        * cross-site evaluation (``MODEL_VALIDATE``): the test split (the validation split if the
          datalist has none), as ``dice``, ``dice_<class>`` and the number of ``volumes``.
        """
        if self._setup_error is not None:
            return self._failed_start_reply(fl_ctx)
        validate_type = shareable.get_header(AppConstants.VALIDATE_TYPE)
        try:
            current_round = self._load_global(shareable, fl_ctx)
        except ValueError as e:
            self.log_error(fl_ctx, str(e))
            return make_reply(ReturnCode.BAD_TASK_DATA)
        before_train = validate_type == ValidateType.BEFORE_TRAIN_VALIDATE
        volumes = self.data.validation if before_train or not self.data.test else self.data.test
        amp = self.train_settings.amp and self.device.type == "cuda"
        scores = evaluate_volumes(self.model, volumes, self.spec.num_classes, self.device, amp=amp)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        per_class = scores.mean(axis=0)
        mean_dice = float(per_class.mean())
        if before_train:
            self._log("val_dice", mean_dice, current_round)
            for name, value in zip(self.profile.class_names, per_class):
                self._log(f"val_dice_{name}", value, current_round)
            self.log_info(fl_ctx, f"round {current_round}: global model validation Dice {mean_dice:.4f}")
            return DXO(DataKind.METRICS, data={MetaKey.INITIAL_METRICS: mean_dice}).to_shareable()
        split = "test" if self.data.test else "validation (the datalist has no test split)"
        model_name = shareable.get_header(AppConstants.MODEL_OWNER, "?")
        self.log_info(fl_ctx, f"cross-site evaluation of {model_name} on {len(volumes)} {split} volumes: Dice {mean_dice:.4f}")
        metrics = {"dice": mean_dice, "volumes": len(volumes)}
        metrics.update({f"dice_{name}": float(value) for name, value in zip(self.profile.class_names, per_class)})
        return DXO(DataKind.METRICS, data=metrics).to_shareable()

    def abort(self, fl_ctx: FLContext) -> None:
        self._aborted = True

    def finalize(self, fl_ctx: FLContext) -> None:
        self.model = None
