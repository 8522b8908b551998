"""``ov2 export``: the exported tower loads through transformers' remote code alone, where ``ov2_plugin``
cannot be imported, and computes exactly what the plugin computes from the source folder."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers.dynamic_module_utils import get_relative_import_files

from ov2_plugin import Ov2Config, Ov2ForCaptioning, Ov2VisionConfig, Ov2VisionModel, make_image_processor
from ov2_plugin.cli import main as ov2_main
from ov2_plugin.convert import export_tower as export_module
from ov2_plugin.convert.export_tower import AUTO_MAP, export_tower, model_code
from ov2_plugin.image_processing import saved_image_processor
from ov2_plugin.loading import load_vision_model

# Runs in a fresh interpreter whose sys.path starts with a folder where ``ov2_plugin`` raises on import.
REMOTE_LOAD = textwrap.dedent("""
    import importlib, json, sys
    blocker, image_path, *folders = sys.argv[1:]
    sys.path.insert(0, blocker)
    try:
        import ov2_plugin
    except ImportError:
        pass
    else:
        raise SystemExit("ov2_plugin imported although it is blocked: " + ov2_plugin.__file__)
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, AutoModel

    torch.set_num_threads(2)
    image = Image.open(image_path)
    report = {}
    for folder in folders:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        plain = AutoImageProcessor.from_pretrained(folder)  # LLaVA-NeXT passes no trust_remote_code here
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(pixels, output_hidden_states=True)
        tensors = {"pixel_values": pixels, "plain_pixel_values": plain(images=image, return_tensors="pt")["pixel_values"],
                   "last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
        tensors.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
        save_file({k: v.clone().contiguous() for k, v in tensors.items()}, folder + "/remote_outputs.safetensors")
        report[folder] = {"model_module": type(model).__module__, "config_module": type(model.config).__module__,
                          "processor": type(processor).__name__, "plain_processor": type(plain).__name__}
    report["ov2_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "ov2_plugin")
    print("REPORT " + json.dumps(report))
""")


def _vision_source(path: Path) -> Path:
    """A vision-only folder with its own processor (shorter side + centre crop, as a converted release's
    'shortest' mode), which the export must carry over instead of the default squash."""
    torch.manual_seed(0)  # 60 px / patch 8: a 7 x 7 grid, the last 4 pixel rows and columns unread
    config = Ov2VisionConfig.from_preset("tiny", image_size=60, patch_size=8)
    Ov2VisionModel(config).save_pretrained(path)
    processor = make_image_processor(config)
    processor.size, processor.do_center_crop = {"shortest_edge": 60}, True
    processor.save_pretrained(path)
    return path


def _captioner_source(path: Path) -> Path:
    torch.manual_seed(1)
    Ov2ForCaptioning(Ov2Config.from_preset("tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two sources exported, then loaded in one subprocess that cannot import ov2_plugin."""
    root = tmp_path_factory.mktemp("export")
    sources = {"vision-60px": _vision_source(root / "vision-src"), "captioner": _captioner_source(root / "captioner-src")}
    exports = {name: export_tower(src, root / f"{name}-tower") for name, src in sources.items()}
    blocker = root / "blocker" / "ov2_plugin"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('ov2_plugin is blocked in this test')\n")
    rng = np.random.default_rng(0)  # not square and not the model's size, so the processor resizes
    Image.fromarray(rng.integers(0, 256, (83, 61, 3), dtype=np.uint8)).save(root / "image.png")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(root / "modules"), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(blocker.parent), str(root / "image.png"), *map(str, exports.values())],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("REPORT "))[7:])
    return {"sources": sources, "exports": exports, "report": report, "image": root / "image.png"}


@pytest.mark.parametrize("name", ["vision-60px", "captioner"])
def test_exported_tower_matches_the_plugin_without_importing_it(exported, name):
    src, dst = exported["sources"][name], exported["exports"][name]
    remote = load_file(dst / "remote_outputs.safetensors")
    model = load_vision_model(src).eval()
    processor = saved_image_processor(src, model.config)
    pixels = processor(images=Image.open(exported["image"]), return_tensors="pt")["pixel_values"]
    assert torch.equal(remote["pixel_values"], pixels)
    assert torch.equal(remote["plain_pixel_values"], pixels)
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    ours = {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}
    ours.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    assert set(ours) == set(remote) - {"pixel_values", "plain_pixel_values"}
    for key, value in ours.items():
        assert remote[key].shape == value.shape, key
        assert (remote[key] - value).abs().max().item() <= 1e-6, key
    assert pixels.shape[-2:] == (model.config.image_size,) * 2
    assert remote["last_hidden_state"].shape[1] == 1 + (model.config.image_size // model.config.patch_size) ** 2


def test_exported_classes_come_from_the_transformers_modules_cache(exported):
    report = exported["report"]
    assert report["ov2_modules"] == []
    for dst in exported["exports"].values():
        loaded = report[str(dst)]
        assert loaded["model_module"].startswith("transformers_modules.") and loaded["model_module"].endswith(".modeling_ov2")
        assert loaded["config_module"].startswith("transformers_modules.")
        assert loaded["config_module"].endswith(".configuration_ov2")
        assert loaded["processor"] == loaded["plain_processor"] == "CLIPImageProcessor"


def test_exported_folder_holds_config_weights_processor_code_and_readme(exported):
    dst = exported["exports"]["captioner"]
    names = {p.name for p in dst.iterdir()} - {"remote_outputs.safetensors"}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *model_code()}
    assert {"configuration_ov2.py", "modeling_ov2.py", "activation_checkpointing.py"} <= names
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "openvision2_vision" and config["auto_map"] == AUTO_MAP
    assert json.loads((dst / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"
    carried = json.loads((exported["exports"]["vision-60px"] / "preprocessor_config.json").read_text())
    assert carried["do_center_crop"] and carried["size"] == {"shortest_edge": 60}  # the source's own, not the default
    readme = (dst / "README.md").read_text()
    assert "trust_remote_code=True" in readme and "hf:PATH" in readme and 'to("cuda")' in readme
    assert not any(p.name.startswith(".") for p in dst.parent.iterdir())  # no partial folder left beside


def test_exported_code_is_generated_from_the_package_modules():
    package = Path(export_module.__file__).resolve().parent.parent
    files = model_code()
    body = files["configuration_ov2.py"].split("\n", 1)[1]
    assert body == (package / "configuration.py").read_text()
    modeling = files["modeling_ov2.py"].split("\n", 1)[1]
    assert modeling == (package / "modeling_vision.py").read_text().replace(
        "from .configuration import", "from .configuration_ov2 import")
    for name, text in files.items():
        assert text.startswith("# Generated by `ov2 export` from ov2_plugin/")
        imported = [a.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom) and n.level == 0]
        assert not [m for m in imported if m.split(".")[0] == "ov2_plugin"], name


def test_every_relative_import_of_the_exported_code_is_exported(exported):
    dst = exported["exports"]["vision-60px"]
    needed = get_relative_import_files(dst / "modeling_ov2.py")  # what transformers will copy
    assert needed and all(Path(f).is_file() for f in needed)
    assert {Path(f).name for f in needed} >= {"configuration_ov2.py", "activation_checkpointing.py"}


def test_absolute_import_of_the_package_is_refused():
    with pytest.raises(RuntimeError, match="imports ov2_plugin by absolute name"):
        export_module._relative_imports("from ov2_plugin.loading import load_image\n", "x.py")
    with pytest.raises(RuntimeError, match="from .module import name"):
        export_module._relative_imports("from ..loading import load_image\n", "x.py")


def test_missing_source_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        export_tower(tmp_path / "nope", tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_source_that_is_not_openvision2_is_a_one_line_error(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="not an OpenVision 2 encoder") as err:
        export_tower(tmp_path / "clip", tmp_path / "out")
    assert "\n" not in str(err.value)
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        export_tower(tmp_path / "bare", tmp_path / "out")


def test_non_empty_destination_is_refused_and_left_alone(tmp_path):
    src = _vision_source(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty; pass a new") as err:
        export_tower(src, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_tower(src, tmp_path / "file")


def test_failed_export_leaves_no_folder(tmp_path, monkeypatch):
    src = _vision_source(tmp_path / "src")

    def broken_readme(*args):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "readme", broken_readme)
    with pytest.raises(OSError, match="disk full"):
        export_tower(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_exports_into_an_empty_folder_and_reports_errors_in_one_line(tmp_path, capsys):
    src = _vision_source(tmp_path / "src")
    (tmp_path / "out").mkdir()
    assert ov2_main(["export", str(src), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert ov2_main(["export", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ov2 export: error: Output folder") and "\n" not in err
