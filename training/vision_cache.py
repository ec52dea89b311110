"""A cache of the frozen vision tower's output: each image's features computed once, then served from memory.

With the vision tower (Qwen2-VL's `model.model.visual`, ViT + merger) frozen, a LoRA step recomputes the same
features for the same image every epoch. `install` replaces `get_image_features` and `forward` on the model's
Qwen2VLModel (instance attributes; the class is untouched). Each image is keyed by its identity, the image
processor's settings and its grid_thw (`image_keys`); the collator puts the keys in the batch (`KEYS_FIELD`, asked for
by `use_vision_cache`) and the backbone's forward takes them out before anything below it sees them: no pixel is read
to make a key, so on a GPU nothing is copied to the host. The identity is the SHA-1 of the image's encoded file, taken
once per example when the split is tokenized (training/pipeline.py), so two uids with the same image share its
features; where there is none (a stream's decoded images, the per-batch ExampleCollator) it is (uid, index of the
image in its example). Only the images not yet cached go through the tower, in one call,
under no_grad, and the result has the structure `Qwen2VLModel.forward` reads: `pooler_output` split per image
(image_grid_thw order), detached, on the tower's device in its dtype. `last_hidden_state` (the patches before the
merger) is not kept: None. A call without keys (generation, a collator that does not key its images) runs the tower
as usual, counted as bypassed.

A uid identity names an image only as long as a uid names one example's images in the run: the sources refuse
duplicate uids, and NLVR2's and the synthetic set's uids name their split. The settings are a digest of the image
processor's whole configuration (min_pixels/max_pixels as `size`, patch and merge sizes, mean/std, rescaling,
resampling), so the same image under another pixel budget is another key.

Served features are the very values the tower computed for that image (kept in host memory, copied back bitwise).
On the CPU the tower's output for an image does not depend on the other images of the call (checked bitwise with
subsets of 1..64 images), so the run's losses equal the uncached run's (tests/training/test_vision_cache.py); a GPU's
matmul kernels may change with the number of rows, which moves the uncached model's own output at float rounding.

`auto` turns it on only on device types where it was measured to gain (`MEASURED_ON`: the CPU, docs/training_speed.md)
and only when the tower has no trainable parameter (LoRA targets or modules_to_save in it, full fine-tuning with
freeze_vision_tower false) and no dropout; `true` refuses such a tower and is allowed on any device. A call asking for
hidden states or attentions, or giving precomputed vision inputs (image_position_ids, ...), goes through the tower as
usual. Each process of a DDP run keeps its own cache (its own share of the images). Not tried: FSDP and DeepSpeed
ZeRO-3 (sharded vision weights).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
import types
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

logger = logging.getLogger(__name__)

# Backbones whose get_image_features(pixel_values, image_grid_thw) returns pooler_output split per image.
SUPPORTED = ("Qwen2VLModel", "Qwen2_5_VLModel")
MODES = ("auto", "true", "false")
ATTRIBUTE = "vision_feature_cache"  # the VisionFeatureCache on the backbone
KEYS_FIELD = "image_cache_keys"  # the batch field with the ImageKeys of its images, taken out by the backbone
# Device types where `auto` turns the cache on: where a measurement showed a gain (docs/training_speed.md).
MEASURED_ON = ("cpu",)
# kwargs that change what the tower computes or returns: such a call is not served from the cache
_PRECOMPUTED = ("position_ids", "cu_seqlens", "max_seqlen")
_OUTPUTS = ("output_attentions", "output_hidden_states")


@dataclass(frozen=True)
class ImageKeys:
    """A batch's image keys (`image_keys`, pixel_values' order) as one opaque value: the Trainer and accelerate move
    lists and tuples element by element (~0.6 ms for 64 keys), and pass anything else through as it is."""

    keys: tuple[tuple, ...]


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
    keys: list[tuple] | None = None  # the current call's image keys (set by the backbone's forward or `keyed`)
    _warned: set = field(default_factory=set)

    @contextmanager
    def keyed(self, keys: ImageKeys | list[tuple] | None):
        """Within the block, get_image_features reads `keys` as the keys of its images (pixel_values' order)."""
        before, self.keys = self.keys, list(keys.keys) if isinstance(keys, ImageKeys) else keys
        try:
            yield
        finally:
            self.keys = before

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


def pixel_settings(image_processor) -> str:
    """A digest of the image processor's configuration: everything that changes pixel_values for a given image
    (size, i.e. min_pixels/max_pixels, patch, temporal patch and merge sizes, mean/std, rescaling, resampling)."""
    config = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
    return hashlib.sha1(config.encode(), usedforsecurity=False).hexdigest()[:16]


def image_keys(
    uids: Sequence[str],
    counts: Sequence[int],
    image_processor,
    image_grid_thw: torch.Tensor | None,
    digests: Sequence[str] | None = None,
) -> list[tuple]:
    """One key per image, in pixel_values' order: (identity, pixel_settings, t, h, w).

    The identity is ("sha1", digest) when `digests` gives the image's (a SHA-1 of its encoded file, computed once per
    example by training.pipeline.tokenize_split: two uids with the same image share its features), else
    ("uid", uid, index of the image in its example). `counts` gives each example's number of images;
    `image_grid_thw` [images, 3] is the processor's output, on the host (the collator's batch before it is moved)."""
    if image_grid_thw is None:
        raise ValueError(f"{type(image_processor).__name__} gives no image_grid_thw: its images cannot be keyed")
    grids = image_grid_thw.tolist()
    if sum(counts) != len(grids) or (digests is not None and len(digests) != len(grids)):
        given = "" if digests is None else f" ({len(digests)} digests)"
        raise ValueError(f"{sum(counts)} images in the rows{given}, {len(grids)} in image_grid_thw")
    settings = pixel_settings(image_processor)
    named = [("uid", uid, i) for uid, n in zip(uids, counts, strict=True) for i in range(n)]
    identities = named if digests is None else [("sha1", d) if d else u for d, u in zip(digests, named, strict=True)]
    return [(identity, settings, *grid) for identity, grid in zip(identities, grids, strict=True)]


def _bypass_reason(self, image_grid_thw, kwargs: dict) -> str | None:
    if image_grid_thw is None:
        return "no image_grid_thw"
    if getattr(self, ATTRIBUTE).keys is None:
        return "a call without image keys (generation, or a collator that does not key its images)"
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
    keys = cache.keys
    grids = image_grid_thw.tolist()  # [images, 3]: a few integers, the only values read back from the device
    if len(keys) != len(grids) or any(tuple(k[-3:]) != tuple(g) for k, g in zip(keys, grids, strict=False)):
        raise ValueError(f"{len(keys)} image keys do not match the call's {len(grids)} images' grids")
    rows = [t * h * w for t, h, w in grids]
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
        if len(index) == len(keys):  # every image new and none repeated: the call's own tensors, no copy
            pixels, grid = pixel_values, image_grid_thw
        else:
            pixels = torch.cat([pixel_values[starts[i] : starts[i] + rows[i]] for i in index])  # [patches, C*T*P*P]
            grid = image_grid_thw[index]
        with torch.no_grad():  # frozen tower; the features are returned detached anyway
            out = compute(self, pixels, grid, return_dict=True, **kwargs)
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


def _keyed_forward(self, *args, **kwargs):
    """Qwen2VLModel.forward with the batch's image keys (KEYS_FIELD) taken out and handed to get_image_features."""
    with getattr(self, ATTRIBUTE).keyed(kwargs.pop(KEYS_FIELD, None)):
        return type(self).forward(self, *args, **kwargs)


def install(model, max_gb: float) -> VisionFeatureCache:
    """Serve `model`'s image features from a new cache of at most `max_gb` GB; returns the cache."""
    inner = vision_backbone(model)
    if inner is None:
        raise ValueError(f"{type(model).__name__}: no Qwen2-VL-family backbone ({', '.join(SUPPORTED)})")
    cache = VisionFeatureCache(max_bytes=int(max_gb * 2**30))
    setattr(inner, ATTRIBUTE, cache)
    # bound to the instance: a deepcopy of the model gets its own binding (and its own cache)
    inner.get_image_features = types.MethodType(_cached_get_image_features, inner)
    inner.forward = types.MethodType(_keyed_forward, inner)
    return cache


def uninstall(model) -> None:
    inner = vision_backbone(model)
    if inner is not None and hasattr(inner, ATTRIBUTE):
        del inner.get_image_features, inner.forward
        delattr(inner, ATTRIBUTE)


def installed(model) -> VisionFeatureCache | None:
    inner = vision_backbone(model)
    return getattr(inner, ATTRIBUTE, None) if inner is not None else None


def decide(mode: str, model, device_type: str) -> tuple[bool, str]:
    """(on, why) for vision_feature_cache `mode` on a `device_type` ("cpu", "cuda", ...) device: auto is on exactly
    on a MEASURED_ON device with a frozen, deterministic tower; true with a trainable (or dropout) tower, or a model
    outside SUPPORTED, raises (on any device)."""
    if mode not in MODES:
        raise ValueError(f"vision_feature_cache must be one of {MODES}, got {mode!r}")
    if mode == "false":
        return False, "off (vision_feature_cache: false)"
    if mode == "auto" and device_type not in MEASURED_ON:
        return False, f"auto: off on {device_type}, not measured there; set true to try it"
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
    return True, f"on ({mode} on {device_type}: the vision tower is frozen and deterministic)"


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
        with torch.no_grad(), cache.keyed(pixels[KEYS_FIELD]):
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


def keys_collator(collator) -> bool:
    """Whether `collator` can put the image keys in its batches (a `vision_cache_keys` switch): then turns it on."""
    if not hasattr(collator, "vision_cache_keys"):
        return False
    collator.vision_cache_keys = True
    return True


def use_vision_cache(trainer, lab_args, train_dataset=None, collator=None) -> VisionCacheReport:
    """Apply lab_args.vision_feature_cache* to a built trainer (after PEFT wrapped its model, so LoRA targets and
    modules_to_save are known) on its device; the trainer's collator (and `collator`, used to precompute) then keys
    its images. Precompute over `train_dataset` when asked (a stream cannot be: warned)."""
    mode = lab_args.vision_feature_cache
    on, reason = decide(mode, trainer.model, trainer.accelerator.device.type)
    if on and not hasattr(trainer.data_collator, "vision_cache_keys"):
        if mode == "true":
            raise ValueError(
                f"vision_feature_cache: true needs a collator that keys its images; "
                f"{type(trainer.data_collator).__name__} does not"
            )
        on, reason = False, f"off (auto: {type(trainer.data_collator).__name__} does not key its images)"
    report = VisionCacheReport(mode, on, reason)
    logger.info("vision feature cache: %s", reason)
    if not on:
        return report
    keys_collator(trainer.data_collator)
    if collator is not None and not keys_collator(collator):
        collator = trainer.data_collator  # precompute through the trainer's own
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
