"""Geometry of "inpaint only masked": the box the model repaints and where it sits in the model's canvas.

Pure functions on integer boxes (left, top, right, bottom), right and bottom
exclusive, the way Pillow's crop/getbbox count. No images here.
"""

Box = tuple[int, int, int, int]
Size = tuple[int, int]


def box_size(box: Box) -> Size:
    return box[2] - box[0], box[3] - box[1]


def _place(start: int, length: int, limit: int) -> int:
    """Shift a span [start, start+length) inside [0, limit); length <= limit."""
    return min(max(start, 0), limit - length)


def context_box(mask_box: Box, image_size: Size, target_size: Size, padding: int) -> Box:
    """The region around `mask_box` that the model repaints.

    The mask's box grows by `padding` on every side, then along one axis until
    its aspect ratio is the target's (so resizing it to the target does not
    distort it), then is shifted inside the image. Where the grown box is
    larger than the image along an axis it is cut to the image there, and its
    aspect ratio no longer matches (`fit_box` letterboxes what is left).
    The result always contains `mask_box` clipped to the image.
    """
    image_w, image_h = image_size
    target_w, target_h = target_size
    left, top, right, bottom = mask_box
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image_w), min(bottom, image_h)
    if right <= left or bottom <= top:
        raise ValueError(f"mask box {mask_box} is empty or outside the {image_w}x{image_h} image")
    width = right - left + 2 * padding
    height = bottom - top + 2 * padding
    if width * target_h < height * target_w:  # narrower than the target: widen
        width = -(-height * target_w // target_h)
    else:  # wider (or equal): heighten
        height = -(-width * target_h // target_w)
    width, height = min(width, image_w), min(height, image_h)
    # Centre on the mask, then slide back inside the image.
    new_left = _place((left + right - width) // 2, width, image_w)
    new_top = _place((top + bottom - height) // 2, height, image_h)
    return new_left, new_top, new_left + width, new_top + height


def fit_box(size: Size, target_size: Size) -> Box:
    """Where a region of `size` lands, centred, when scaled to fit inside `target_size` without distortion.

    When the aspect ratios differ by less than one source pixel (on either
    side) the region fills the target: a sub-pixel stretch beats a thin bar.
    """
    width, height = size
    target_w, target_h = target_size
    mismatch = width * target_h - height * target_w
    if abs(mismatch) < max(target_w, target_h):
        return 0, 0, target_w, target_h
    if mismatch > 0:  # wider than the target: bars above and below
        fitted_h = max(1, round(height * target_w / width))
        top = (target_h - fitted_h) // 2
        return 0, top, target_w, top + fitted_h
    fitted_w = max(1, round(width * target_h / height))
    left = (target_w - fitted_w) // 2
    return left, 0, left + fitted_w, target_h


def grow_box(box: Box, margin: int, image_size: Size) -> Box:
    """`box` grown by `margin` on every side, clipped to the image."""
    left, top, right, bottom = box
    return (max(left - margin, 0), max(top - margin, 0),
            min(right + margin, image_size[0]), min(bottom + margin, image_size[1]))


def model_scale(box: Box, placed: Box) -> float:
    """Model pixels per input pixel (linear) for a box placed at `placed`."""
    return min(box_size(placed)[0] / box_size(box)[0], box_size(placed)[1] / box_size(box)[1])
