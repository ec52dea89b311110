"""Every change the lab makes to a third-party library's private names, in one place, each behind a version guard.

A patch names the versions it was read against (`CHECKED`). Under any other version it is not applied: a warning
says so and the library runs as shipped. tests/training/test_upstream.py fails when the installed version is outside
`CHECKED` or the private name no longer looks as it did, so an upgrade meets a red test before a silent change.

- `trl.trainer.utils._use_triton(device)`: TRL 1.16's fused LM head (`add_fused_lm_head`, used by
  `SFTTrainer.compute_loss`) asks it whether to score only the labelled positions; training/trainer.py wraps it so
  that the CPU takes that path too.

Instance-level replacements of public methods on the lab's own model objects (training/vision_cache.py,
training/shared_prefix.py) are not patches of library names and stay with their features.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable

from packaging.specifiers import SpecifierSet
from packaging.version import Version

logger = logging.getLogger(__name__)

# patch -> {package: the versions the patch was read against}
CHECKED = {"trl_use_triton": {"trl": SpecifierSet(">=1.16.0,<1.17")}}

_lock = threading.Lock()  # the benchmark trains several trainers in threads
_originals: dict[str, Callable] = {}  # patch -> the library's own object it replaced
_refused: set[str] = set()  # patches not applied in this process (warned once)


def unchecked_versions(patch: str) -> list[str]:
    """'package version' for each package of `patch` installed outside the versions it was checked on."""
    out = []
    for package, spec in CHECKED[patch].items():
        installed = importlib.metadata.version(package)
        if not spec.contains(Version(installed), prereleases=True):
            out.append(f"{package} {installed} (checked: {spec})")
    return out


def _refuse(patch: str, why: str) -> bool:
    if patch not in _refused:
        _refused.add(patch)
        logger.warning("not patching %s: %s; the library runs as shipped", patch, why)
    return False


def patch_trl_use_triton(wrap: Callable[[Callable], Callable]) -> bool:
    """Replace `trl.trainer.utils._use_triton` with `wrap(TRL's own)`, once per process; True when in place. False
    (warned once, TRL untouched) under a TRL version outside CHECKED or when the name is gone."""
    patch = "trl_use_triton"
    if patch in _originals:  # every training step asks
        return True
    with _lock:
        if patch in _originals:
            return True
        if patch in _refused:
            return False
        unchecked = unchecked_versions(patch)
        if unchecked:
            return _refuse(patch, f"{', '.join(unchecked)}; re-read trl/trainer/utils.py and widen CHECKED")
        import trl.trainer.utils as trl_utils

        original = getattr(trl_utils, "_use_triton", None)
        if original is None:
            return _refuse(patch, "trl.trainer.utils._use_triton is gone")
        # TRL scores every position off CUDA/XPU to keep Neuron's tile shapes fixed, which the CPU does not need:
        # https://github.com/huggingface/trl/blob/v1.16.0/trl/trainer/utils.py (add_fused_lm_head)
        trl_utils._use_triton = wrap(original)
        _originals[patch] = original
        return True


def original(patch: str) -> Callable | None:
    """The library's own object a patch replaced (None when not applied)."""
    return _originals.get(patch)
