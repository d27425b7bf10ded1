"""The site side of the federation: an NVFlare ``Learner`` run by ``LearnerExecutor``."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

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
from torch import nn

from flap_sam.data.site import DEMO as DEMO_DATA_ROOT
from flap_sam.data.site import SiteData
from flap_sam.data.stacks import PreparedVolume, SliceStackDataset, build_augmentation
from flap_sam.errors import CheckpointError
from flap_sam.federated.filters import SITE_ERROR_HEADER, SITE_ERROR_KINDS, BaseMismatchError, site_error_kind
from flap_sam.federated.progress import ROUND_PROGRESS_EVENT, ROUND_PROGRESS_KEY
from flap_sam.files import PERSONAL_ADAPTER_FILE, save_torch
from flap_sam.jobs.spec import JobSpec
from flap_sam.model.adapter_file import FINGERPRINT_KEY, base_fingerprint, base_mismatch, weights_digest
from flap_sam.model.factory import build_model, export_weights, import_weights, random_base_refusal, refuses_random_base, resolve_checkpoint
from flap_sam.model.lora import at_rank, lower_lora_rank
from flap_sam.model.presets import exchanged_names, personal_names
from flap_sam.training.device import apply_cpu_threads, pick_device
from flap_sam.training.local_trainer import LocalTrainer, RoundProgress, evaluate_volumes, resolve_data_workers
from flap_sam.training.memory_plan import checkpointing_to_build, plan_site_memory
from flap_sam.training.schedule import federation_steps
from flap_sam.training.schema import checked_value, package_defaults
from flap_sam.training.settings import SiteSettings, TrainingSettings

# Each default is the one the schema declares (a job's FLARE config passes every value anyway).
DEFAULT = package_defaults()
SITE_SETTINGS_FILE = "flap_sam_site.json"


class FlapSamLearner(Learner):
    """Fine-tunes LoRA-SAM slice by slice on the site's 3D volumes and returns only the preset's tensors.

    Built once per run (``initialize``): the base SAM (optionally from a site-local official
    checkpoint), the site's checked data, the optimiser. Each round: load the global adapter,
    validate it (reported as initial metrics for model selection), train local steps, send the
    preset's tensors with the number of steps.

    ``spec`` is the job's model and task settings (the ``job_spec`` block of ``settings.conf``,
    validated as a ``JobSpec``): the same block the result filter and the server's adapter model get.

    With a preset that has a personal part (``flap_personal``) the site also trains that part, which
    never leaves it: it is saved in the site's app folder (``personal_adapter.pt``) after every round,
    and the final cross-site evaluation scores the global model alone (the part at its base values,
    ``dice``) and with the part (``personal_dice``); only those numbers travel.

    A site may override its own settings (``SiteSettings.OVERRIDABLE``: data, checkpoint, device,
    the speed and memory settings and its LoRA rank) in ``<workspace>/local/flap_sam_site.json``, so
    one job serves every site. A site at a lower rank (``site_ranks``) builds the job's model, then
    lowers its adapter, and lowers a global model that arrives at a higher rank (``at_rank``).

    Before it trains, the site checks that the server built the same SAM base (the fingerprint
    in the global model's meta), that a job on the demo's short budget (``demo_budget``)
    only runs on the demo data, and that real data never trains a random base (a ViT without
    checkpoint) unless the job says ``random_weights = true``. It never sends non-finite weights. Messages that name files
    stay in the site's own log; the server only learns a fixed error kind.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        training: dict[str, Any],
        site: dict[str, Any],
        privacy: str = DEFAULT["privacy"],
        analytic_sender_id: str = "analytic_sender",
    ) -> None:
        """
        Args:
            spec: the ``job_spec`` block (``JobSpec``); training: the ``training`` block (``TrainingSettings``);
            site: the ``site`` block (``SiteSettings``); privacy: the ``privacy`` setting (the update then
                travels as a difference, which FLARE's privacy filters work on).
        """
        super().__init__()
        job = JobSpec.from_settings(spec)
        self.profile, self.spec = job.task, job.model
        self.training = TrainingSettings.from_settings(training, where="training: ", model_type=self.spec.model_type)
        self.site_settings = SiteSettings.from_settings(site, where="site: ")
        checked_value("privacy", privacy)
        # FLARE's privacy filters work on a difference: with privacy on, the update travels as a WEIGHT_DIFF.
        self.send_difference = privacy != "none"
        self.analytic_sender_id = analytic_sender_id
        self.model: nn.Module | None = None
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
        self.site_settings = self.site_settings.with_overrides(overrides, where=f"site settings {path}: ")
        self.log_info(fl_ctx, f"site settings from {path}: {sorted(overrides)}")

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        # Check data and checkpoint when the run starts, not when the first task arrives.
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)

    def initialize(self, parts: dict[str, Any], fl_ctx: FLContext) -> None:
        self.writer = parts.get(self.analytic_sender_id)
        self._start(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        """Set up once; a failure is kept (tasks are then refused) and logged here, on the site."""
        if self.model is not None or self._setup_error is not None:
            return
        try:
            self._setup(fl_ctx)
        except Exception as e:  # noqa: BLE001 (a boundary: any failure becomes one line or a refusal)
            self._fail(fl_ctx, e)

    def _fail(self, fl_ctx: FLContext, error: Exception) -> None:
        """Keep ``error`` (every later task is refused); its message, which may name files, stays on the site.

        The full line goes to the site's ``log.txt`` at warning level without a FLARE log event, so
        neither FLARE's error-log streaming (``error_log.txt``) nor ``show_errors`` carries it;
        the error line that may travel holds the fixed kind only.
        """
        self._setup_error = error
        site = fl_ctx.get_identity_name()
        self.log_warning(fl_ctx, f"site {site} cannot start: {error}", fire_event=False)
        self.log_error(fl_ctx, f"site {site}: {SITE_ERROR_KINDS[site_error_kind(error)]} (details in this site's log.txt)")

    def _failed_start_reply(self, fl_ctx: FLContext) -> Shareable:
        """The reply to every task of a site that could not start: an error with its category only."""
        kind = site_error_kind(self._setup_error or RuntimeError())
        self.log_error(fl_ctx, f"refusing the task: {SITE_ERROR_KINDS[kind]}; fix it and restart the job")
        return self._error_reply(kind)

    def _network(self) -> nn.Module:
        """The site's model (built when the run starts; a site that could not build it refuses every task first)."""
        if self.model is None:
            raise RuntimeError("the site's model is not built: the run has not started")
        return self.model

    @staticmethod
    def _error_reply(kind: str) -> Shareable:
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(SITE_ERROR_HEADER, kind)
        return reply

    def _setup(self, fl_ctx: FLContext) -> None:
        self.site_name = fl_ctx.get_identity_name()
        self._apply_site_overrides(fl_ctx)
        site = self.site_settings
        if site.demo_budget and site.data_root != DEMO_DATA_ROOT:
            raise ValueError(
                f"data_root {site.data_root}: this job runs the demo's short budget (demo_budget = true) and would "
                "not train real data with the paper's recipe; make the job with `flap-sam job JOB --out DIR --set "
                "data_root=DIR` or, when sites set data_root locally, `--set demo_budget=false` (either runs the recipe)"
            )
        self.device = pick_device(site.device)
        if self.device.type == "cpu":
            apply_cpu_threads(site.cpu_threads)
        data_workers = resolve_data_workers(site.data_workers, self.device)
        torch.manual_seed(self.training.seed)
        self.data = SiteData.load(
            self.profile,
            site.data_root,
            self.site_name,
            self.spec.image_size,
            self.spec.num_classes,
            site.datalist or None,
            site.train_volumes,
            site.structures(self.profile.class_names),
        )
        checkpoint = resolve_checkpoint(site.checkpoint, self.spec.model_type)
        if refuses_random_base(self.spec.model_type, checkpoint, site.data_root == DEMO_DATA_ROOT, site.random_weights):
            raise CheckpointError(random_base_refusal(self.spec.model_type))
        self.lora_rank = site.lora_rank(self.site_name, self.spec)
        model = build_model(self.spec, checkpoint, self.device, site.attention, checkpointing_to_build(site.checkpointing))
        self.model = model
        self.exchanged = exchanged_names(model, self.spec.preset_obj)
        # The personal part (a preset's ``personal``): trains here, never exported; its base values score the global model alone.
        self.personal = personal_names(model, self.spec.preset_obj)
        self.personal_base = export_weights(model, self.personal)
        self.base = base_fingerprint(model, self.exchanged, from_checkpoint=bool(checkpoint))  # of the job's model, as the server's
        job_rank = self.spec.preset_obj.lora_rank(self.spec.rank)
        if self.lora_rank < job_rank:
            lower_lora_rank(model, self.lora_rank)
            self.log_info(fl_ctx, f"site_ranks: this site trains and exchanges LoRA at rank {self.lora_rank} (the job's: {job_rank})")
        augment = build_augmentation(self.spec.image_size, self.training.acquisition_augment) if self.training.augment else None
        dataset = SliceStackDataset(self.data.train, augment, seed=self.training.seed, slice_channels=self.spec.slice_channels)
        memory = plan_site_memory(model, site, self.training, self.spec.image_size, self.device)
        self.trainer = LocalTrainer(
            model,
            dataset,
            self.training,
            self.device,
            data_workers,
            site.cpu_bf16,
            memory.return_memory,
            self.training.loss_weights(self.profile.class_names),
        )
        self.log_info(
            fl_ctx,
            f"{self.spec.model_type} preset={self.spec.preset} on {self.device}: {len(self.exchanged)} tensors, "
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters train and are exchanged; "
            f"attention {site.attention}, {data_workers} data worker(s), {torch.get_num_threads()} CPU thread(s)",
        )
        self.log_info(fl_ctx, memory.describe())

    # ---- rounds ---------------------------------------------------------------------------
    def _load_global(self, shareable: Shareable, fl_ctx: FLContext, require_base: bool) -> int:
        """Load the global model into the site's SAM; returns its round.

        Raises:
            BaseMismatchError: the server built another SAM base (checked whenever the global model
                carries its fingerprint, and required with ``require_base``: before training).
            ValueError: the payload is not the preset's WEIGHTS.
        """
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            raise ValueError(f"global model: expected WEIGHTS, got {dxo.data_kind}")
        server_base = dxo.get_meta_prop(FINGERPRINT_KEY)
        if server_base is not None or require_base:
            mismatch = base_mismatch(server_base, self.base)
            if mismatch:
                raise BaseMismatchError(mismatch)
        current_round = int(shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0)
        self.log_info(fl_ctx, f"round {current_round}: received the global adapter {weights_digest(dxo.data)}")
        # A site below the job's rank lowers a global model that came at a higher one (before the server knew its rank).
        import_weights(self._network(), at_rank(dxo.data, self.lora_rank), self.exchanged, "global model from the server")
        return current_round

    def _receive(self, shareable: Shareable, fl_ctx: FLContext, require_base: bool) -> int | Shareable:
        """``_load_global``, or the error reply to send instead (a base mismatch stops the site)."""
        try:
            return self._load_global(shareable, fl_ctx, require_base)
        except BaseMismatchError as e:
            self._fail(fl_ctx, e)
            return self._failed_start_reply(fl_ctx)
        except ValueError as e:
            self.log_error(fl_ctx, str(e))
            return make_reply(ReturnCode.BAD_TASK_DATA)

    def _report_progress(self, progress: RoundProgress, fl_ctx: FLContext) -> None:
        """A round's progress, within the round: to this site's log, and to the server (its progress view)."""
        self.log_info(fl_ctx, progress.describe())
        event = Shareable()
        event[ROUND_PROGRESS_KEY] = dataclasses.asdict(progress)
        self.fire_fed_event(ROUND_PROGRESS_EVENT, event, fl_ctx)

    def _log(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), global_step=step)

    def train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if self._setup_error is not None:
            return self._failed_start_reply(fl_ctx)
        current_round = self._receive(shareable, fl_ctx, require_base=True)
        if isinstance(current_round, Shareable):
            return current_round
        received = export_weights(self._network(), self.exchanged) if self.send_difference else None
        num_rounds = int(shareable.get_header(AppConstants.NUM_ROUNDS, 1) or 1)
        steps = self.training.steps_per_round(self.trainer.steps_per_epoch())
        first_step, total_steps = federation_steps(current_round, num_rounds, steps)
        self._aborted = False
        done, loss = self.trainer.train(
            steps,
            first_step=first_step,
            total_steps=total_steps,
            round_seed=self.training.round_seed(current_round),
            should_stop=lambda: abort_signal.triggered or self._aborted,
            on_progress=lambda progress: self._report_progress(progress, fl_ctx),
            progress_every_s=self.site_settings.progress_every_s,
            current_round=current_round,
        )
        if abort_signal.triggered or self._aborted:
            return make_reply(ReturnCode.TASK_ABORTED)
        weights = export_weights(self._network(), self.exchanged)
        bad = [name for name, value in weights.items() if not np.isfinite(value).all()]
        if bad or not np.isfinite(loss):
            self.log_error(
                fl_ctx,
                f"round {current_round}: local training diverged (loss {loss}, {len(bad)} tensor(s) with "
                f"non-finite values, e.g. {bad[:1]}); no update is sent. Lower lr or check the data.",
            )
            return self._error_reply("diverged")
        self._log("train_loss", loss, current_round)
        self._log("lr", self.trainer.optimizer.param_groups[0]["lr"], current_round)
        self.log_info(
            fl_ctx,
            f"round {current_round}: {done} local steps (global steps {first_step}-{first_step + done - 1} "
            f"of {total_steps}), mean loss {loss:.4f}",
        )
        self.local_weights = weights
        if self.personal:
            self._save_personal(current_round, fl_ctx)
        # The round travels in the meta (LearnerExecutor rebuilds the Shareable, dropping headers).
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: done, AppConstants.CURRENT_ROUND: current_round}
        if received is not None:
            difference = {name: (value - received[name]).astype(np.float32) for name, value in weights.items()}
            return DXO(DataKind.WEIGHT_DIFF, data=difference, meta=meta).to_shareable()
        return DXO(DataKind.WEIGHTS, data=self.local_weights, meta=meta).to_shareable()

    def _save_personal(self, current_round: int, fl_ctx: FLContext) -> None:
        """The personal part as trained so far, atomically into this site's app folder (it never leaves the site)."""
        path = os.path.join(fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id()), PERSONAL_ADAPTER_FILE)
        params = dict(self._network().named_parameters())
        save_torch(
            {
                "model": {name: params[name].detach().cpu().clone() for name in self.personal},
                "meta_props": {"preset": self.spec.preset, "round": current_round},
            },
            path,
        )

    def _dice(self, volumes: list[PreparedVolume], mode: str) -> np.ndarray:
        """(classes,) mean Dice of the model as it is over ``volumes``."""
        scores = evaluate_volumes(
            self._network(), volumes, self.spec.num_classes, self.device, amp=self.trainer.amp, mode=mode, **self.training.refinements()
        )
        return scores.mean(axis=0)

    def _global_and_personal_dice(self, volumes: list[PreparedVolume], mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(classes,) Dice of the global model alone (the personal part at its base values) and of this site's personalised model."""
        personal = export_weights(self._network(), self.personal)
        personalised = self._dice(volumes, mode)
        import_weights(self._network(), self.personal_base, self.personal, "personal part (base values)")
        try:
            global_only = self._dice(volumes, mode)
        finally:
            import_weights(self._network(), personal, self.personal, "personal part")
        return global_only, personalised

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
        before_train = validate_type == ValidateType.BEFORE_TRAIN_VALIDATE
        current_round = self._receive(shareable, fl_ctx, require_base=before_train)
        if isinstance(current_round, Shareable):
            return current_round
        volumes = self.data.validation if before_train or not self.data.test else self.data.test
        mode = self.training.round_inference if before_train else self.training.final_inference
        personalised = None
        if self.personal and not before_train:
            per_class, personalised = self._global_and_personal_dice(volumes, mode)
        else:
            per_class = self._dice(volumes, mode)  # before training, with a personal part: the site's personalised model
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
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
        if personalised is not None:  # this site's personalised model: the global one with its own personal part
            self.log_info(
                fl_ctx, f"cross-site evaluation of {model_name} with this site's personal part: Dice {float(personalised.mean()):.4f}"
            )
            metrics["personal_dice"] = float(personalised.mean())
            metrics.update({f"personal_dice_{name}": float(value) for name, value in zip(self.profile.class_names, personalised)})
        return DXO(DataKind.METRICS, data=metrics).to_shareable()

    def abort(self, fl_ctx: FLContext) -> None:
        self._aborted = True

    def finalize(self, fl_ctx: FLContext) -> None:
        self.model = None
