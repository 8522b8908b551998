"""The ``ov2`` command. Each subcommand lives in its own module and is imported only when run,
so ``ov2 caption`` never pays for DeepSpeed or the evaluation frameworks."""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "quickstart": ("ov2_plugin.quickstart", "main", "pretrain a tiny OpenVision 2 on the built-in scenes and report"),
    "pretrain": ("ov2_plugin.pretrain", "main", "captioning-only pretraining (Trainer flags accepted)"),
    "caption": ("ov2_plugin.caption", "main", "caption images with a pretrained model"),
    "convert": ("ov2_plugin.convert.cli", "main", "official OpenVision (2) / open_clip weights <-> ours; CLIP/SigLIP warm start"),
    "llava-build": ("ov2_plugin.llava.build", "main", "assemble an HF LLaVA with an OpenVision 2 vision tower"),
    "llava-train": ("ov2_plugin.llava.train", "main", "LLaVA stage 1 / stage 2 / LoRA training with an OpenVision 2 tower"),
    "probe": ("ov2_plugin.evaluation.scene_probe", "main", "linear probes of towers' features on the built-in scenes (no language model)"),
    "compare": ("ov2_plugin.experiments.objectives", "main", "pretraining objectives (OpenVision 2, OV1, CLIP, CoCa) at equal FLOPs, judged downstream"),
    "eval": ("ov2_plugin.evaluation.cli", "main", "score a LLaVA model via lmms-eval / VLMEvalKit / lm-eval ('ov2 eval suite' writes the suite)"),
    "export": ("ov2_plugin.convert.export_tower", "main", "write a self-contained vision-tower folder (trust_remote_code) that loads without ov2_plugin"),
}

USER_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError, NotADirectoryError)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "usage: ov2 COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + "\n\nov2 COMMAND --help shows a command's flags."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ov2: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        getattr(importlib.import_module(module), func)(rest)
    except USER_ERRORS as err:
        if os.environ.get("OV2_DEBUG"):
            raise
        print(f"ov2 {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
