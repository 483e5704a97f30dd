"""Image preprocessing shared by the models and the datasets.

Every hypkern model takes images as float tensors in ``[0, 1]`` and normalises them itself
(MERU keeps ``pixel_mean``/``pixel_std`` as buffers; the open_clip adapter applies the
model's own mean/std). So ``preprocess`` only resizes, crops and converts.
"""
from __future__ import annotations

from torchvision import transforms as T


def image_transform(image_size: int, interpolation: str = "bicubic", resize_mode: str = "shortest"):
    """PIL image -> ``(3, image_size, image_size)`` float tensor in ``[0, 1]``.

    ``resize_mode="shortest"``: resize the short side to ``image_size`` then centre-crop (MERU's
    and CLIP's evaluation transform); ``"squash"``: resize both sides, no crop.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}
    if interpolation not in modes:
        raise ValueError(f"interpolation must be one of {tuple(modes)}, got {interpolation!r}")
    if resize_mode == "shortest":
        resize = [T.Resize(image_size, interpolation=modes[interpolation]), T.CenterCrop(image_size)]
    elif resize_mode == "squash":
        resize = [T.Resize((image_size, image_size), interpolation=modes[interpolation])]
    else:
        raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
    return T.Compose([_to_rgb, *resize, T.ToTensor()])


def _to_rgb(image):
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
