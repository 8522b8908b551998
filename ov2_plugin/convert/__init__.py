"""Checkpoint interop: official OpenVision / OpenVision 2 releases (open_clip layout) <-> ours,
and warm starts from Hugging Face CLIP / SigLIP vision models. Heavy optional packages are not
imported here; open_clip itself is never needed to convert."""

from .release import ConversionReport, convert_release, export_release, load_state_dict_file
from .warm_start import WarmStartReport, warm_start_from_hf

__all__ = [
    "ConversionReport",
    "WarmStartReport",
    "convert_release",
    "export_release",
    "load_state_dict_file",
    "warm_start_from_hf",
]
