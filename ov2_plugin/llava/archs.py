"""The LLaVA families an OpenVision 2 tower goes into, as one table: Hugging Face's classes for each, its
tiles (pinpoints), its chat format and how its processor counts a CLS tower's image tokens.

What each family's HF code does with a tower (read from transformers 5.24's ``llava``, ``llava_next`` and
``llava_onevision`` modelling and processing files):

| arch | tiles | processor's token count for our tower (CLS first, ``default`` drops it) |
|---|---|---|
| ``llava`` | one ``image_size`` square | ``LlavaProcessor``: (side // patch)^2 + ``num_additional_image_tokens`` (1) - 1 |
| ``llava_next`` | base image + tiles of a pinpoint, newline per row | ``LlavaNextProcessor``: ``patch_size`` and ``num_additional_image_tokens`` (1) |
| ``llava_next_video`` | as NeXT; video frames pooled 2x2 | as NeXT (even grids only: ``check_video_grid``) |
| ``llava_onevision`` | as NeXT, at most 9 tiles' worth after bilinear downscale (``anyres_max_9``); several images in one prompt: one square each | ``LlavaOnevisionProcessor``: ``num_image_tokens`` = grid^2 + 1 (its side is ``int(sqrt(n))``) |

Tiles are cut at pinpoints divided by ``vision_config.image_size``, so pinpoints must be multiples of the
tower's size, and the image processor's size equals it. Both anyres families fail on a CLS tower with the
``full`` strategy (the base tile is no longer a square grid), so ``default`` is required there.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
)

from .chat import CHATML, VICUNA, ChatFormat


@dataclass(frozen=True)
class Arch:
    name: str
    config_class: type
    model_class: type
    processor_class: type
    image_processor_class: type | None  # None: the tower's own square processor (CLIPImageProcessor)
    tiles: tuple[tuple[int, int], ...]  # default pinpoints as (rows, columns) of tower-sized tiles
    chat: ChatFormat
    multi_image: bool  # several images in one record (each a single square tile)
    video_processor_class: type | None = None  # the processor requires one (frames: the tower's preprocessing)


# LLaVA-NeXT's five pinpoints (336 px CLIP: 336x672, 672x336, 672x672, 1008x336, 336x1008), in tiles.
NEXT_TILES = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
# LLaVA-OneVision's grid: every rows x columns up to 6 x 6 (384 px SigLIP: 384 ... 2304), read with anyres_max_9.
ONEVISION_TILES = tuple((r, c) for r in range(1, 7) for c in range(1, 7))

ARCHS: dict[str, Arch] = {
    "llava": Arch("llava", LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, None, (), VICUNA, False),
    "llava_next": Arch("llava_next", LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor,
                       LlavaNextImageProcessor, NEXT_TILES, VICUNA, False),
    "llava_onevision": Arch("llava_onevision", LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                            LlavaOnevisionProcessor, LlavaOnevisionImageProcessor, ONEVISION_TILES, CHATML, True,
                            LlavaOnevisionVideoProcessor),
    "llava_next_video": Arch("llava_next_video", LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration,
                             LlavaNextVideoProcessor, LlavaNextImageProcessor, NEXT_TILES, VICUNA, False,
                             LlavaNextVideoVideoProcessor),
}
ANYRES_MAX = "anyres_max_9"  # LLaVA-OneVision's vision_aspect_ratio


def check_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"Unknown --arch {name!r}; choose one of {', '.join(ARCHS)} (llava is LLaVA-1.5).")
    return ARCHS[name]


def check_strategy(arch: Arch, strategy: str) -> None:
    if arch.tiles and strategy != "default":
        raise ValueError(
            f"--vision_feature_select_strategy {strategy!r} keeps the OpenVision 2 tower's CLS token, and {arch.name}'s "
            "anyres tiles need a square patch grid ('The number of patches is not consistent with the image size'); "
            "use 'default', which drops the CLS token."
        )


def check_video_grid(arch: Arch, vision_config) -> None:
    """LLaVA-NeXT-Video pools each frame's grid with ``AvgPool2d(2)`` (13 x 13 = 169 features for 27 x 27), but
    ``LlavaNextVideoProcessor`` counts ``grid^2 // 4`` placeholders (182): every odd grid fails in transformers
    5.24 (SigLIP-so400m-384's too). Refused here rather than failing at the first video."""
    grid = vision_config.num_patches_per_side
    if arch.name == "llava_next_video" and grid % 2:
        raise ValueError(
            f"llava_next_video cannot take a {grid}x{grid}-patch tower: transformers' LlavaNextVideoProcessor counts "
            f"{grid * grid // 4} video tokens a frame while the model's AvgPool2d(2) makes {(grid // 2) ** 2} (a "
            "transformers bug for every odd grid); use --arch llava_onevision for video, or a tower with an even grid "
            "such as L/14-336 (24x24)."
        )


def pinpoints_for(arch: Arch, image_size: int, pinpoints: list | None = None) -> list[list[int]]:
    """The arch's pinpoints in pixels for a tower of ``image_size``, or the given ones after checking them."""
    if pinpoints is None:
        return [[r * image_size, c * image_size] for r, c in arch.tiles]
    bad = [p for p in pinpoints if len(p) != 2 or any(int(v) <= 0 or int(v) % image_size for v in p)]
    if bad:
        raise ValueError(
            f"Pinpoint {bad[0]} is not a multiple of the tower's image size {image_size} in both sides; {arch.name} cuts "
            f"tiles of {image_size} px, so use e.g. {image_size}x{2 * image_size} (height x width)."
        )
    return [[int(h), int(w)] for h, w in pinpoints]


def parse_pinpoints(text: str | None) -> list[list[int]] | None:
    """``"384x768,768x384"`` (height x width, pixels) -> ``[[384, 768], [768, 384]]``."""
    if not text:
        return None
    try:
        return [[int(v) for v in item.lower().split("x")] for item in text.replace(" ", ",").split(",") if item]
    except ValueError:
        raise ValueError(f"--image_grid_pinpoints {text!r}: write HEIGHTxWIDTH pairs in pixels, e.g. 384x768,768x384.") from None


def make_image_processor_for(arch: Arch, square, image_size: int, pinpoints: list[list[int]] | None):
    """The arch's image processor with the tower's preprocessing (``square``: the tower's own processor, whose
    mean/std and resampling carry over: ImageNet mean/std and bilinear for the release, not OpenAI CLIP's)."""
    size = square.size.get("height", square.size.get("shortest_edge"))
    if size != image_size:
        raise ValueError(
            f"The image processor resizes to {size} px but the tower's image_size is {image_size}; the tile size "
            "and the processor's size must be the tower's. Drop --image_size, or save a processor of that size "
            "with the tower."
        )
    if arch.image_processor_class is None:
        return square
    side = {"height": image_size, "width": image_size}
    return arch.image_processor_class(
        size=side, crop_size=side, do_center_crop=False, resample=square.resample,
        image_mean=list(square.image_mean), image_std=list(square.image_std), do_rescale=True, do_normalize=True,
        do_convert_rgb=True, do_pad=True, image_grid_pinpoints=pinpoints,
    )
