"""Input transforms that run on the device, inside the jitted step.

Batches travel as uint8 (4x less to copy than float32); normalisation and augmentation happen
here, fused by XLA into the first layer's input. Augmentation is seeded by (seed, step), so a run
is reproducible and a resumed run sees the same images as an uninterrupted one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .config import crop_pad, rrc_min_scale

RRC_RATIO = (3 / 4, 4 / 3)  # rrc's crop aspect ratios (width / height), drawn log-uniform as torchvision's


def alternating_flip(key, x, idx, epoch):
    """airbench's derandomized flip: image `i` is mirrored in even epochs if a coin drawn once for it
    (from `key` and `i`) says so, and in the odd epochs otherwise. Every image is seen both ways in
    every two epochs, where independent coins repeat the same view a quarter of the time."""
    coin = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(idx)
    flip = coin ^ (epoch % 2 == 1)
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def augment(key, x, ops: tuple[str, ...]):
    """Random flips, shifts/crops, rotations, zoom and colour jitter on a float batch in [0, 1].

    - flip: horizontal mirror with p=0.5 (never use it for digits); altflip (applied by the train
      step, which knows each image and the epoch) mirrors in alternate epochs, see alternating_flip.
    - shift: translate up to 10% of the side (Keras' width/height_shift_range=0.1), zero fill.
    - crop: pad 4 px (reflect) and crop back at a random place, the standard CIFAR recipe; crop:N
      pads N px (airbench's 2 suits schedules of a few epochs, which underfit).
    - rrc: random-resized crop (Inception's, torchvision's RandomResizedCrop): a box of 25% to 100% of
      the area (rrc:S: S to 100%) and aspect ratio 3:4 to 4:3, resized back to the full image; the
      subject is seen at many sizes and places, as other people's photos frame it.
    - rotate: up to +-10 degrees; zoom: scale in [0.9, 1.1]; both with bilinear resampling.
    - color: brightness +-0.2 and contrast in [0.8, 1.2].
    """
    if not ops:
        return x
    n, h, w, c = x.shape
    k_flip, k_crop, k_aff, k_col = jax.random.split(key, 4)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1)) if "flip" in ops else None
    min_scale = rrc_min_scale(ops)
    if min_scale is not None:  # its own stream: the other ops draw what they drew before rrc existed
        # The mirror is folded into the crop's column taps: a separate flip of the gathered batch made
        # XLA:CPU refuse the gather into the select, 10x slower (666 against 66 ms, 64 x 128x128).
        x = resized_crops(x, rrc_boxes(jax.random.fold_in(key, 5), n, h, w, min_scale),
                          None if flip is None else flip[:, 0, 0, 0])
        flip = None
    pad = crop_pad(ops)
    if pad:
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        offs = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
        x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(xp, offs)
    if flip is not None:
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    if any(o in ops for o in ("shift", "rotate", "zoom")):
        x = _affine(k_aff, x, shift=0.1 if "shift" in ops else 0.0,
                    angle=10.0 if "rotate" in ops else 0.0, zoom=0.1 if "zoom" in ops else 0.0)
    if "color" in ops:
        kb, kc = jax.random.split(k_col)
        b = jax.random.uniform(kb, (n, 1, 1, 1), minval=-0.2, maxval=0.2)
        ct = jax.random.uniform(kc, (n, 1, 1, 1), minval=0.8, maxval=1.2)
        m = x.mean(axis=(1, 2, 3), keepdims=True)
        x = jnp.clip((x - m) * ct + m + b, 0.0, 1.0)
    return x


def _affine(key, x, shift: float, angle: float, zoom: float):
    """One bilinear warp per image: rotation about the centre, zoom, translation; zeros outside."""
    n, h, w, c = x.shape
    ka, kz, ks = jax.random.split(key, 3)
    theta = jax.random.uniform(ka, (n,), minval=-angle, maxval=angle) * (math.pi / 180.0)
    scale = jax.random.uniform(kz, (n,), minval=1.0 - zoom, maxval=1.0 + zoom)
    t = jax.random.uniform(ks, (n, 2), minval=-shift, maxval=shift) * jnp.array([h, w], jnp.float32)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    def warp(img, th, s, tr):
        # Inverse map: for each output pixel, where it comes from in the input.
        cos, sin = jnp.cos(th) / s, jnp.sin(th) / s
        dy, dx = yy - cy - tr[0], xx - cx - tr[1]
        sy = cos * dy - sin * dx + cy
        sx = sin * dy + cos * dx + cx
        chans = [jax.scipy.ndimage.map_coordinates(img[..., i], [sy, sx], order=1, mode="constant") for i in range(c)]
        return jnp.stack(chans, axis=-1)

    return jax.vmap(warp)(x, theta, scale, t)


def rrc_boxes(key, n: int, h: int, w: int, min_scale: float, ratio=RRC_RATIO):
    """(n, 4) boxes (top, left, height, width), in pixels and fractional, inside an h x w image: area share
    uniform in [min_scale, 1], aspect ratio log-uniform in `ratio`, position uniform. A box that would
    stick out is clipped to the image (torchvision redraws it up to 10 times instead: branches a jitted
    step cannot take)."""
    ka, kr, ky, kx = jax.random.split(key, 4)
    area = jax.random.uniform(ka, (n,), minval=min_scale, maxval=1.0) * (h * w)
    r = jnp.exp(jax.random.uniform(kr, (n,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    bw, bh = jnp.minimum(jnp.sqrt(area * r), w), jnp.minimum(jnp.sqrt(area / r), h)
    top, left = jax.random.uniform(ky, (n,)) * (h - bh), jax.random.uniform(kx, (n,)) * (w - bw)
    return jnp.stack([top, left, bh, bw], -1)


def resized_crops(x, boxes, mirror=None):
    """Each image's box (top, left, height, width) resized bilinearly to the image's own size, and
    mirrored left-right where the boolean (n,) `mirror` says so.

    Separable: whole rows are gathered and blended, then columns, each output pixel a blend of two
    neighbours per axis. Gathering rows and columns ran 3x faster on the 2-core CPU than the same
    resize as two batched matrix products with (size x size) weight matrices (36 against 105 ms for
    64 photos of 128x128 on a busy host)."""
    n, h, w, c = x.shape
    ylo, yhi, fy = jax.vmap(lambda b: _taps(b[0], b[2], h))(boxes)  # (n, h) each
    xlo, xhi, fx = jax.vmap(lambda b: _taps(b[1], b[3], w))(boxes)  # (n, w) each
    if mirror is not None:  # output column j takes what column w - 1 - j would have
        xlo, xhi, fx = (jnp.where(mirror[:, None], t[:, ::-1], t) for t in (xlo, xhi, fx))

    def rows(idx):
        return jnp.take_along_axis(x, idx[:, :, None, None], axis=1)

    fy = fy[:, :, None, None]
    x = rows(ylo) * (1 - fy) + rows(yhi) * fy

    def cols(idx):
        return jnp.take_along_axis(x, idx[:, None, :, None], axis=2)

    fx = fx[:, None, :, None]
    return cols(xlo) * (1 - fx) + cols(xhi) * fx


def _taps(start, length, size: int):
    """(lower neighbour, upper neighbour, weight of the upper) of `size` pixel centres sampling
    [start, start + length) of an axis (half-pixel convention, as jax.image.resize); positions are
    clamped to the box, so this resizes the box alone."""
    pos = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * (length / size) - 0.5
    pos = jnp.clip(pos, start, jnp.maximum(start, start + length - 1))
    lo = jnp.floor(pos)
    frac = pos - lo
    lo = lo.astype(jnp.int32)
    return lo, jnp.minimum(lo + 1, size - 1), frac
