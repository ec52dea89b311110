"""Training stages of a composed VLM as configuration: which components train (vision, projector, LM frozen / LoRA /
full), a learning rate per component, and for MoE language models the router's load-balancing loss and expert load.

`VLMTrainer` is TRL's SFTTrainer with three small overrides:
- create_optimizer: one parameter group per (component, weight decay) with its own learning rate, built with the
  optimizer class and kwargs TRL/transformers pick from the arguments (standard optimizers; no GaLore/LOMO).
- compute_loss: adds `router_aux_loss_coef x` the Switch-Transformer load-balancing loss (transformers'
  `load_balancing_loss_func`) computed from router logits caught by forward hooks on the LM's router modules.
  Why hooks: TRL 1.16's own MoE path reads `router_logits` off the backbone output, and LlavaModel / AyaVisionModel
  outputs do not carry them (AttributeError), so the trainer turns TRL's path off and does it here.
- log: the aux loss, each expert's share of the routed tokens and the per-group learning rates, to TensorBoard.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from peft import LoraConfig
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from trl import ModelConfig, SFTTrainer

from training.compose import component_of
from training.models import lora_config

logger = logging.getLogger(__name__)

LM_MODES = ("frozen", "lora", "full")


@dataclass
class StageArguments:
    stage_name: str = field(default="align", metadata={"help": "Name of the stage, recorded with the run."})
    train_vision: bool = field(default=False, metadata={"help": "Train the vision encoder."})
    train_projector: bool = field(default=True, metadata={"help": "Train the projector."})
    train_language_model: str = field(
        default="frozen",
        metadata={
            "help": "frozen; lora (LoRA from the lora_* fields; trainable vision/projector are saved with the "
            "adapter as modules_to_save); full (every LM weight, embeddings and lm_head included).",
            "choices": list(LM_MODES),
        },
    )
    vision_learning_rate: float | None = field(default=None, metadata={"help": "LR of the vision encoder."})
    projector_learning_rate: float | None = field(default=None, metadata={"help": "LR of the projector."})
    language_model_learning_rate: float | None = field(default=None, metadata={"help": "LR of the full LM."})
    lora_learning_rate: float | None = field(default=None, metadata={"help": "LR of the LoRA weights."})

    def __post_init__(self):
        if self.train_language_model not in LM_MODES:
            raise ValueError(f"train_language_model {self.train_language_model!r}: choose one of {list(LM_MODES)}")

    def learning_rates(self, default: float) -> dict[str, float]:
        """Component -> learning rate (unset: the training arguments' learning_rate)."""
        lrs = {
            "vision": self.vision_learning_rate,
            "projector": self.projector_learning_rate,
            "language_model": self.language_model_learning_rate,
            "lora": self.lora_learning_rate,
        }
        return {k: default if v is None else v for k, v in lrs.items()}


def set_trainable(model, stage: StageArguments) -> dict[str, int]:
    """requires_grad per component (LoRA comes later, from the PEFT config); returns trainable parameters each."""
    wanted = {
        "vision": stage.train_vision,
        "projector": stage.train_projector,
        "language_model": stage.train_language_model == "full",
    }
    counts = dict.fromkeys(wanted, 0)
    for name, param in model.named_parameters():
        component = component_of(name)
        param.requires_grad_(wanted[component])
        counts[component] += param.numel() if wanted[component] else 0
    if not any(wanted.values()) and stage.train_language_model != "lora":
        raise ValueError(f"stage {stage.stage_name}: nothing to train")
    return counts


def stage_lora_config(model_args: ModelConfig, stage: StageArguments) -> LoraConfig | None:
    """The LoRA config (training.models.lora_config, composed-VLM targets) when the stage trains the LM under LoRA,
    else None; the stage's other trainable components (vision, projector) as modules_to_save."""
    model_args.use_peft = stage.train_language_model == "lora"
    trained = {"vision_tower": stage.train_vision, "multi_modal_projector": stage.train_projector}
    return lora_config(model_args, family="composed", modules_to_save=[m for m, on in trained.items() if on])


def group_of(name: str) -> str:
    return "lora" if "lora_" in name else component_of(name)


def parameter_groups(model, lrs: dict[str, float], weight_decay: float, decay_names) -> list[dict]:
    """One optimizer group per (component, decay or not) among trainable parameters: {"name", "params", "lr", ...}."""
    decay_names = set(decay_names)
    groups: dict[tuple[str, bool], list] = defaultdict(list)
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[(group_of(name), name in decay_names)].append(param)
    return [
        {
            "name": f"{g}{'' if d else '_no_decay'}",
            "params": ps,
            "lr": lrs[g],
            "weight_decay": weight_decay if d else 0.0,
        }
        for (g, d), ps in sorted(groups.items())
    ]


def _router_spec(language_model):
    """(router module class, index of its logits in the output) for an MoE LM, else None."""
    recorder = getattr(type(language_model), "_can_record_outputs", None) or {}
    spec = recorder.get("router_logits")
    return None if spec is None else (spec.target_class, spec.index)


def expert_load(router_logits: tuple[torch.Tensor, ...], top_k: int, attention_mask=None) -> torch.Tensor:
    """[E] share of the top-k assignments each expert got, averaged over layers (padding excluded)."""
    loads = []
    for logits in router_logits:  # [B*T, E]
        chosen = logits.topk(top_k, dim=-1).indices  # [B*T, k]
        weight = torch.ones_like(chosen, dtype=torch.float32)
        if attention_mask is not None:
            weight = weight * attention_mask.reshape(-1, 1).to(weight)
        counts = torch.zeros(logits.shape[-1], device=logits.device).scatter_add_(
            0, chosen.reshape(-1), weight.flatten()
        )
        loads.append(counts / counts.sum().clamp(min=1))
    return torch.stack(loads).mean(0)


class VLMTrainer(SFTTrainer):
    """SFTTrainer + per-component learning rates + MoE router aux loss and expert-load logging (module docstring)."""

    def __init__(self, *args, stage: StageArguments, **kwargs):
        self.stage = stage
        training_args, model = kwargs["args"], kwargs["model"]
        text_config = model.config.get_text_config()
        coef = training_args.router_aux_loss_coef
        self.moe_aux_coef = getattr(text_config, "router_aux_loss_coef", 0.0) if coef is None else coef
        training_args.router_aux_loss_coef = 0.0  # TRL's own MoE path breaks on LLaVA-family outputs: ours below
        super().__init__(*args, **kwargs)
        training_args.router_aux_loss_coef = coef  # restored: the run record and the saved config keep the real value
        if hasattr(text_config, "router_aux_loss_coef"):
            text_config.router_aux_loss_coef = self.moe_aux_coef
        self._capturing, self._router_logits = False, []
        self._moe_log: dict[str, list] = defaultdict(list)
        self.num_experts = getattr(text_config, "num_experts", None) or getattr(text_config, "num_local_experts", 0)
        self.top_k = getattr(text_config, "num_experts_per_tok", 0)
        spec = _router_spec(model.model.language_model)
        self.is_moe = spec is not None and self.num_experts > 0
        if self.is_moe:
            router_cls, index = spec
            for module in model.model.language_model.modules():
                if isinstance(module, router_cls):
                    module.register_forward_hook(self._catch(index))
            logger.info(
                "MoE: %d experts, top-%d, router aux loss coef %s", self.num_experts, self.top_k, self.moe_aux_coef
            )

    def _catch(self, index: int):
        def hook(module, inputs, output):
            if self._capturing:
                self._router_logits.append(output[index])

        return hook

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            lrs = self.stage.learning_rates(self.args.learning_rate)
            groups = parameter_groups(model, lrs, self.args.weight_decay, self.get_decay_parameter_names(model))
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **kwargs)
            logger.info(
                "optimizer groups: %s", [(g["name"], g["lr"], sum(p.numel() for p in g["params"])) for g in groups]
            )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.is_moe and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._capturing, self._router_logits = True, []
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._capturing = False
        logits, mask = tuple(self._router_logits), inputs.get("attention_mask")
        self._router_logits = []
        aux = load_balancing_loss_func(logits, self.num_experts, self.top_k, mask)
        with torch.no_grad():
            self._moe_log["aux"].append(float(aux))
            self._moe_log["load"].append(expert_load(logits, self.top_k, mask).cpu())
        if not self.moe_aux_coef:
            return result
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1  # as TRL does
        extra = self.moe_aux_coef * aux / steps
        return (result[0] + extra, result[1]) if return_outputs else result + extra

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.optimizer is not None:  # a training log
            for group in self.optimizer.param_groups:
                logs[f"lr_{group['name']}"] = group["lr"]
            if self._moe_log["aux"]:
                load = torch.stack(self._moe_log["load"]).mean(0)  # [E]
                logs["moe_aux_loss"] = sum(self._moe_log["aux"]) / len(self._moe_log["aux"])
                logs["moe_load_max_over_mean"] = float(load.max() * len(load))  # 1.0: perfectly balanced
                logs.update({f"moe_load_expert_{e}": float(x) for e, x in enumerate(load)})
                self._moe_log.clear()
        super().log(logs, start_time)
