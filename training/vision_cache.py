"""A cache of the frozen vision tower's output: each image's features computed once, then served from memory.

With the vision tower (Qwen2-VL's `model.model.visual`, ViT + merger) frozen, a LoRA step recomputes the same
features for the same image every epoch. `install` replaces `get_image_features` on the model's Qwen2VLModel
(instance attribute; the class is untouched): each image is keyed by a SHA-1 of its rows of `pixel_values`
(prod(grid_thw) rows per image, dtype and width included) plus its grid_thw; only the images not yet cached go
through the tower, in one call, under no_grad, and the result has the structure `Qwen2VLModel.forward` reads:
`pooler_output` split per image (image_grid_thw order), detached, on the tower's device in its dtype.
`last_hidden_state` (the patches before the merger) is not kept: None.

Served features are the very values the tower computed for that image (kept in host memory, copied back bitwise).
On the CPU the tower's output for an image does not depend on the other images of the call (checked bitwise with
subsets of 1..64 images), so the run's losses equal the uncached run's (tests/training/test_vision_cache.py); a GPU's
matmul kernels may change with the number of rows, which moves the uncached model's own output at float rounding.

Refused (or, with `auto`, off) when the tower has a trainable parameter (LoRA targets or modules_to_save in it, full
fine-tuning with freeze_vision_tower false) or a dropout; a call asking for hidden states or attentions, or giving
precomputed vision inputs (image_position_ids, ...), goes through the tower as usual. Each process of a DDP run keeps
its own cache (its own share of the images). Not tried: FSDP and DeepSpeed ZeRO-3 (sharded vision weights).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

logger = logging.getLogger(__name__)

# Backbones whose get_image_features(pixel_values, image_grid_thw) returns pooler_output split per image.
SUPPORTED = ("Qwen2VLModel", "Qwen2_5_VLModel")
MODES = ("auto", "true", "false")
ATTRIBUTE = "vision_feature_cache"  # the VisionFeatureCache on the backbone
# kwargs that change what the tower computes or returns: such a call is not served from the cache
_PRECOMPUTED = ("position_ids", "cu_seqlens", "max_seqlen")
_OUTPUTS = ("output_attentions", "output_hidden_states")


@dataclass
class VisionFeatureCache:
    """Per-image features in host memory, up to `max_bytes`; counters of what was served and computed."""

    max_bytes: int
    features: dict[tuple, torch.Tensor] = field(default_factory=dict)
    bytes: int = 0
    hits: int = 0  # images served from the cache
    misses: int = 0  # images not in the cache when asked for
    computed: int = 0  # images run through the tower (a batch's duplicates once)
    bypassed_calls: int = 0  # calls computed without the cache (hidden states asked for, tower made trainable, ...)
    full: bool = False
    _warned: set = field(default_factory=set)

    def add(self, key: tuple, features: torch.Tensor) -> None:
        if self.full:
            return
        size = features.numel() * features.element_size()
        if self.bytes + size > self.max_bytes:
            self.full = True
            logger.warning(
                "vision feature cache: cap of %.2f GB reached after %d images (%.1f MB); later images are computed "
                "every time (raise vision_feature_cache_max_gb)",
                self.max_bytes / 2**30, len(self.features), self.bytes / 2**20,
            )  # fmt: skip
            return
        self.features[key] = features.detach().to("cpu", copy=True)  # a copy: not a view of the whole batch
        self.bytes += size

    def warn_once(self, reason: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("vision feature cache bypassed: %s", reason)

    def stats(self) -> dict:
        return {
            "images": len(self.features),
            "mb": round(self.bytes / 2**20, 3),
            "max_gb": self.max_bytes / 2**30,
            "full": self.full,
            "hits": self.hits,
            "misses": self.misses,
            "computed": self.computed,
            "bypassed_calls": self.bypassed_calls,
        }


def _unwrap(model) -> torch.nn.Module:
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP / accelerate wrappers
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # PeftModel


def vision_backbone(model) -> torch.nn.Module | None:
    """The Qwen2VLModel (or Qwen2.5-VL's) inside `model`: through DDP's .module, PEFT's get_base_model() and the
    ForConditionalGeneration's .model; None for other families."""
    model = _unwrap(model)
    inner = getattr(model, "model", model)
    return inner if type(inner).__name__ in SUPPORTED and hasattr(inner, "visual") else None


def why_not_cacheable(tower: torch.nn.Module) -> list[str]:
    """What makes the tower's output differ between two calls on the same image: trainable parameters, dropout."""
    problems = []
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    if trainable:
        problems.append(f"{len(trainable)} trainable vision-tower parameters (e.g. {trainable[0]})")
    dropouts = [
        n
        for n, m in tower.named_modules()
        if (isinstance(m, torch.nn.Dropout) and m.p > 0) or float(getattr(m, "attention_dropout", 0.0) or 0.0) > 0
    ]
    if dropouts:
        problems.append(f"dropout in the vision tower ({dropouts[0]})")
    return problems


def _sha1(data) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


def image_keys(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, threads_above_mb: float = 16) -> list[tuple]:
    """One key per image: SHA-1 of its prod(grid_thw) rows of pixel_values (bytes, dtype, row width) + its grid.

    ~2.5 ms for the embedded default's 4.8 MB batch on one core. A batch over `threads_above_mb` (Qwen2-VL-2B at
    448x448: ~4.8 MB per image in float32) is hashed by several threads (hashlib releases the GIL)."""
    grids = [tuple(g) for g in image_grid_thw.tolist()]
    flat = pixel_values.detach().to("cpu").contiguous()  # [patches, C*T*P*P]
    raw = flat.reshape(flat.shape[0], -1).view(torch.uint8).numpy()  # [patches, bytes per row]
    bounds = [0]
    for t, h, w in grids:
        bounds.append(bounds[-1] + t * h * w)
    if bounds[-1] != flat.shape[0]:
        raise ValueError(f"pixel_values has {flat.shape[0]} rows; image_grid_thw covers {bounds[-1]}")
    tag = f"|{flat.dtype}|{raw.shape[1]}".encode()  # two byte-identical images in different dtypes differ
    parts = [memoryview(raw[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    if raw.nbytes > threads_above_mb * 2**20 and len(parts) > 1:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(_sha1, parts))
    else:
        digests = [_sha1(part) for part in parts]
    return [(digest, tag, *grid) for digest, grid in zip(digests, grids, strict=True)]


def _bypass_reason(self, image_grid_thw, kwargs: dict) -> str | None:
    if image_grid_thw is None:
        return "no image_grid_thw"
    if kwargs.get("return_dict") is False:
        return "return_dict=False"
    if any(kwargs.get(k) for k in _OUTPUTS):
        return "hidden states or attentions asked for"
    if any(k.startswith("image_") or k in _PRECOMPUTED for k in kwargs):
        return "precomputed vision inputs given"
    problems = why_not_cacheable(self.visual)
    return f"the vision tower is no longer cacheable: {'; '.join(problems)}" if problems else None


def _cached_get_image_features(self, pixel_values: torch.Tensor, image_grid_thw=None, **kwargs):
    """Qwen2VLModel.get_image_features served from `self.vision_feature_cache` (bound to the instance by `install`)."""
    cache: VisionFeatureCache = getattr(self, ATTRIBUTE)
    compute = type(self).get_image_features  # the class's own (its decorators included)
    reason = _bypass_reason(self, image_grid_thw, kwargs)
    if reason is not None:
        cache.bypassed_calls += 1
        cache.warn_once(reason)
        return compute(self, pixel_values, image_grid_thw, **kwargs)
    kwargs.pop("return_dict", None)
    keys = image_keys(pixel_values, image_grid_thw)
    rows = image_grid_thw.prod(-1).tolist()
    starts = [0, *itertools.accumulate(rows)]  # each image's first row in pixel_values
    missing: dict[tuple, int] = {}  # key -> index of its first image in this call
    for i, key in enumerate(keys):
        if key in cache.features:
            cache.hits += 1
        else:
            cache.misses += 1
            missing.setdefault(key, i)
    device = next(self.visual.parameters()).device
    computed = {}
    if missing:
        index = list(missing.values())
        pixels = torch.cat([pixel_values[starts[i] : starts[i] + rows[i]] for i in index])  # [patches, C*T*P*P]
        with torch.no_grad():  # frozen tower; the features are returned detached anyway
            out = compute(self, pixels, image_grid_thw[index], return_dict=True, **kwargs)
        cache.computed += len(index)
        for key, feats in zip(missing, out.pooler_output, strict=True):  # feats [tokens, hidden]
            computed[key] = feats.detach()
            cache.add(key, feats)
    served = [k for k in keys if k not in computed]
    if served:  # one host-to-device copy for all of them (a no-op on the CPU)
        stored = [cache.features[k] for k in served]
        moved = torch.cat(stored).to(device).split([len(s) for s in stored])
        computed.update(zip(served, moved, strict=True))
    return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=tuple(computed[k] for k in keys))


def install(model, max_gb: float) -> VisionFeatureCache:
    """Serve `model`'s image features from a new cache of at most `max_gb` GB; returns the cache."""
    inner = vision_backbone(model)
    if inner is None:
        raise ValueError(f"{type(model).__name__}: no Qwen2-VL-family backbone ({', '.join(SUPPORTED)})")
    cache = VisionFeatureCache(max_bytes=int(max_gb * 2**30))
    setattr(inner, ATTRIBUTE, cache)
    # bound to the instance: a deepcopy of the model gets its own binding (and its own cache)
    inner.get_image_features = types.MethodType(_cached_get_image_features, inner)
    return cache


def uninstall(model) -> None:
    inner = vision_backbone(model)
    if inner is not None and hasattr(inner, ATTRIBUTE):
        del inner.get_image_features
        delattr(inner, ATTRIBUTE)


def installed(model) -> VisionFeatureCache | None:
    inner = vision_backbone(model)
    return getattr(inner, ATTRIBUTE, None) if inner is not None else None


def decide(mode: str, model) -> tuple[bool, str]:
    """(on, why) for vision_feature_cache `mode`: auto is on exactly when the tower is frozen and deterministic; true
    with a trainable (or dropout) tower, or a model outside SUPPORTED, raises."""
    if mode not in MODES:
        raise ValueError(f"vision_feature_cache must be one of {MODES}, got {mode!r}")
    if mode == "false":
        return False, "off (vision_feature_cache: false)"
    inner = vision_backbone(model)
    if inner is None:
        problems = [f"{type(_unwrap(model)).__name__} is not a supported backbone ({', '.join(SUPPORTED)})"]
    else:
        problems = why_not_cacheable(inner.visual)
    if problems and mode == "true":
        raise ValueError(
            f"vision_feature_cache: true needs a frozen, deterministic vision tower, but: {'; '.join(problems)}. "
            "Use vision_feature_cache: auto (off here) or false."
        )
    if problems:
        return False, f"off (auto: {'; '.join(problems)})"
    return True, f"on ({mode}: the vision tower is frozen and deterministic)"


def precompute(model, dataset, collator, batch_size: int, show_progress: bool = True) -> int:
    """Fill the cache with every image of `dataset` (a datasets.Dataset of the collator's rows): one no-grad pass in
    batches of `batch_size` rows (the training batch, so the tower sees the shapes it sees in training). Stops at the
    cap. Returns the images computed."""
    inner, cache = vision_backbone(model), installed(model)
    device = next(inner.visual.parameters()).device
    before = cache.computed
    bar = tqdm(total=len(dataset), desc="Vision features (once per image)", disable=not show_progress)
    for batch in dataset.iter(batch_size=batch_size):
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        pixels = collator(rows)
        with torch.no_grad():
            inner.get_image_features(pixels["pixel_values"].to(device), pixels["image_grid_thw"].to(device))
        bar.update(len(rows))
        if cache.full:
            break
    bar.close()
    return cache.computed - before


@dataclass
class VisionCacheReport:
    """What a run did with the cache: the setting, the decision, precompute time, and the cache's counters."""

    setting: str
    enabled: bool
    reason: str
    precompute_s: float = 0.0
    precomputed_images: int = 0
    cache: VisionFeatureCache | None = None

    def record(self) -> dict:
        out = {"setting": self.setting, "enabled": self.enabled, "reason": self.reason}
        if self.cache is not None:
            out |= {"precompute_s": round(self.precompute_s, 3), "precomputed_images": self.precomputed_images}
            out |= self.cache.stats()
        return out


def use_vision_cache(trainer, lab_args, train_dataset=None, collator=None) -> VisionCacheReport:
    """Apply lab_args.vision_feature_cache* to a built trainer (after PEFT wrapped its model, so LoRA targets and
    modules_to_save are known); precompute over `train_dataset` when asked (a stream cannot be: warned)."""
    on, reason = decide(lab_args.vision_feature_cache, trainer.model)
    report = VisionCacheReport(lab_args.vision_feature_cache, on, reason)
    logger.info("vision feature cache: %s", reason)
    if not on:
        return report
    report.cache = install(trainer.model, lab_args.vision_feature_cache_max_gb)
    if lab_args.vision_feature_cache_precompute:
        if train_dataset is None or not hasattr(train_dataset, "iter") or not hasattr(train_dataset, "__len__"):
            logger.warning("vision_feature_cache_precompute: the train split is a stream; filled as it is read")
            return report
        start = time.perf_counter()
        main = trainer.accelerator.is_local_main_process
        size = trainer.args.per_device_train_batch_size
        report.precomputed_images = precompute(trainer.model, train_dataset, collator, size, show_progress=main)
        report.precompute_s = time.perf_counter() - start
        stats = report.cache.stats()
        logger.info(
            "vision feature cache: precomputed %d images in %.1f s (%.1f MB)",
            report.precomputed_images, report.precompute_s, stats["mb"],
        )  # fmt: skip
    return report
