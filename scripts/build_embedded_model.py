"""Build the embedded default (training/embedded_build.py): a small Qwen2-VL-architecture model + processor,
pretrained on synthetic tasks, saved in HF format so the lab loads it through the same from_pretrained path as
Qwen/Qwen2-VL-2B-Instruct. No network.

# Build (or reuse, when the folder holds a build with the same settings) artifacts/models/embedded-qwen2vl
python scripts/build_embedded_model.py

# An untrained model with the same architecture, in seconds (what the unit tests use)
python scripts/build_embedded_model.py --output_dir /tmp/untrained --vision_steps 0 --steps 0

# Force a rebuild
python scripts/build_embedded_model.py --force true

# Rebuild from scratch and refresh the shipped base (training/embedded_base, what make demo starts from) with it
python scripts/build_embedded_model.py --force true --refresh_shipped true

Every build records its command, date, machine, settings, library versions and the SHA-256 of each file in
build_info.json; the demo refuses a shipped file that no longer matches.
"""

from __future__ import annotations

import logging
import shlex
import sys

from trl import TrlParser

from training.embedded_build import BuildArguments
from training.embedded_build import build_embedded_model as main

if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        (build_args,) = parse_args(TrlParser((BuildArguments,)))
        print(main(build_args, command=shlex.join(["python", *sys.argv])))
