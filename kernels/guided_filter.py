"""The guided filter (He, Sun and Tang, ECCV 2010 / TPAMI 2013) and its fast subsampled form
(He and Sun, "Fast Guided Filter", arXiv 1505.00996), array-module generic, float32.

Edge-aware smoothing of a map p by a guide I: within every (2r+1)² window, q is locally linear
in I, q = aᵀI + b, fitted by ridge regression (eps). A colour guide fits a with a 3×3
covariance per window; a grey guide is the scalar case. A stack of L maps shares the guide's
statistics and the per-pixel inverse.

The fast filter fits a and b on the s×s block means of guide and maps with radius r/s (the
guide's variances from its full-resolution products, block-averaged), upsamples their window
means bilinearly to full resolution and applies them to the full-resolution guide there:
q = mean_a·I + mean_b. s = 1 is the exact filter.

    q = guided_filter(image / 255, masks, r=16, eps=1e-3, s=4)   # (H, W, 3), (L, H, W) -> (L, H, W)

Everything is written with the input's array module (kernels.backend.array_module: NumPy on
the CPU, CuPy on a GPU), with no SciPy: box sums are shifted adds, the 3×3 solve is the
closed-form inverse of the symmetric matrix, resampling is slicing. Spatial axes are the last
two of the maps, (..., H, W); a colour guide is (H, W, 3), as images are.
"""
from __future__ import annotations

from kernels.backend import array_module, is_cupy

# The full-resolution step runs over tiles of TILE_BLOCKS × TILE_BLOCKS blocks, in batches of
# about BATCH_VALUES coefficient values, so that on a CPU its intermediates stay in the cache
# (measured: 2× faster than one pass over the whole image). On a GPU it runs in one batch.
TILE_BLOCKS = 8
BATCH_VALUES = 1 << 18


def box_mean(x, r: int):
    """(..., H, W) -> float32 mean over the (2r+1)² window around each pixel, clipped at the
    borders (windows near the edge average fewer pixels, not zero padding)."""
    xp = array_module(x)
    out = xp.asarray(x, dtype=xp.float32)
    h, w = out.shape[-2:]
    for axis in (-2, -1):
        out = _window_sums(out, r, axis, xp)
    return out * _inverse_counts(h, w, r, xp)


def _inverse_counts(h: int, w: int, r: int, xp):
    """(h, w) float32: 1 / the number of pixels in each clipped window."""
    def counts(n):
        idx = xp.arange(n)
        return (xp.minimum(idx + r + 1, n) - xp.maximum(idx - r, 0)).astype(xp.float32)
    return 1.0 / (counts(h)[:, None] * counts(w)[None, :])


def _window_sums(x, r: int, axis: int, xp):
    """Sums over [i - r, i + r] along one axis (zeros outside), by doubling: sums of 1, 2, 4,
    ... consecutive entries, each from two shifted halves, combined along the binary digits
    of 2r + 1. About 2·log2(2r + 1) shifted adds, and no partial sum holds more than 2r + 1
    terms (a cumulative sum over the whole axis holds its length and loses float32 precision:
    1e-4 at 512 pixels against 1e-6 here)."""
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    power = xp.pad(x, pad)  # power[i] = sum of `width` entries from padded position i
    width, offset, out, k = 1, 0, None, 2 * r + 1
    while True:
        if k & 1:
            part = _slice(power, offset, n, axis)
            out = part.copy() if out is None else out + part
            offset += width
        k >>= 1
        if not k:
            return out
        m = power.shape[axis] - width
        power = _slice(power, 0, m, axis) + _slice(power, width, m, axis)
        width *= 2


def _slice(x, start: int, length: int, axis: int, step: int = 1):
    """x[start : start + length·step : step] along axis (a view)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + (length - 1) * step + 1, step)
    return x[tuple(index)]


def downsample_mean(x, s: int, axes: tuple[int, ...] = (-2, -1)):
    """(..., H, W) -> (..., ceil(H/s), ceil(W/s)) float32 means of s×s blocks; blocks past
    the border repeat the last row / column (edge padding). s = 1 returns x as float32.
    axes=(-2,) or (-1,) averages blocks of s along that axis alone."""
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float32)
    if s == 1:
        return x
    for axis in axes:
        n = x.shape[axis]
        m = -(-n // s)
        if m * s > n:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, m * s - n)
            x = xp.pad(x, pad, mode="edge")
        total = _slice(x, 0, m, axis, s).copy()
        for t in range(1, s):
            total += _slice(x, t, m, axis, s)
        x = total
    return x * xp.float32(1.0 / s ** len(axes))


def upsample_bilinear(x, s: int, size: tuple[int, int]):
    """(..., h, w) block values -> (..., H, W) float32 with size = (H, W), ceil(H/s) = h and
    ceil(W/s) = w: bilinear between block centres (block j's centre is full-resolution pixel
    j·s + (s-1)/2, as in downsample_mean), constant past the outer centres. s = 1 returns x."""
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float32)
    if s == 1:
        return x
    for axis, n in ((-1, size[1]), (-2, size[0])):
        x = _slice(_interpolate_phases(_edge_pad(x, axis, xp), s, axis, xp), 0, n, axis)
    return x


def _edge_pad(x, axis: int, xp):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    return xp.pad(x, pad, mode="edge")


def _interpolate_phases(padded, s: int, axis: int, xp):
    """Block values with one edge-padded entry on each side along axis, (..., m + 2, ...) ->
    (..., m·s, ...): pixel j·s + t lies at block coordinate j + d_t, d_t = (t - (s-1)/2) / s,
    between blocks j - 1 and j (d_t < 0) or j and j + 1, with the same weights for every j:
    a product and a sum per half of the phases (per phase along the last axis)."""
    ax = axis % padded.ndim
    m = padded.shape[ax] - 2
    diff = _slice(padded, 1, m + 1, ax) - _slice(padded, 0, m + 1, ax)  # diff[i] = padded[i + 1] - padded[i]
    shape = list(padded.shape)
    out = xp.empty(shape[:ax] + [m, s] + shape[ax + 1:], dtype=xp.float32)
    phase = (xp.arange(s, dtype=xp.float32) - (s - 1) / 2) / s
    tail = (None,) * (padded.ndim - ax - 1)
    grow = (slice(None),) * (ax + 1) + (None,)  # a phase axis after the block axis
    # left neighbour j - 1, then j (padded j, j + 1); along the last axis one phase at a time
    # (a phase axis innermost would make every inner loop s / 2 long)
    last = ax == padded.ndim - 1
    groups = [(t, t + 1, int(t >= s // 2)) for t in range(s)] if last else [(0, s // 2, 0), (s // 2, s, 1)]
    for lo, hi, left in groups:
        if lo == hi:
            continue
        frac = (phase[lo:hi] + (1 - left))[(slice(None),) + tail]  # weight of the right neighbour
        dst = out[(slice(None),) * (ax + 1) + (slice(lo, hi),)]
        xp.multiply(_slice(diff, left, m, ax)[grow], frac, out=dst)
        dst += _slice(padded, left, m, ax)[grow]
    return out.reshape(shape[:ax] + [m * s] + shape[ax + 1:])


def guide_planes(guide):
    """(H, W) or (H, W, C) -> (C, H, W) float32 planes (C = 1 for a grey guide)."""
    xp = array_module(guide)
    guide = xp.asarray(guide, dtype=xp.float32)
    return guide[None] if guide.ndim == 2 else xp.ascontiguousarray(xp.moveaxis(guide, -1, 0))


def _pairs(c: int) -> list[tuple[int, int]]:
    """The guide's channel pairs i <= j, in the order of guide_products."""
    return [(i, j) for i in range(c) for j in range(i, c)]


def guide_products(planes, s: int):
    """Full-resolution guide planes (C, H, W) -> (C(C+1)/2, ceil(H/s), ceil(W/s)) float32: the
    s×s block means of the products (I_i - m_i)(I_j - m_j), i <= j, m = the mean of the
    planes' block means (guided_coefficients' centre). With them the fast filter's window
    variances of the guide are those of the full-resolution pixels in its windows; from the
    block means alone they miss what varies inside a block, the fit sees a smoother guide and
    masks spill past edges (COCO instances tune: box AP50 -0.3 without, +0.0 with)."""
    xp = array_module(planes)
    planes = xp.asarray(planes, dtype=xp.float32)
    centred = planes - downsample_mean(planes, s).mean(axis=(1, 2), keepdims=True)
    pairs = _pairs(planes.shape[0])
    products = xp.empty((len(pairs),) + planes.shape[1:], dtype=xp.float32)
    for k, (i, j) in enumerate(pairs):
        xp.multiply(centred[i], centred[j], out=products[k])
    return downsample_mean(products, s)


def guided_coefficients(planes, p, r: int, eps: float, products=None):
    """guide planes (C, h, w) (C = 1 or 3), maps (L, h, w) -> (mean_a (C, L, h, w), mean_b
    (L, h, w)) float32: the window means of the local linear coefficients, so that
    q = sum_c mean_a[c] · planes[c] + mean_b.

    Guide and maps are centred on their means first (the filter is equivariant to adding
    constants to either), which keeps float32 variances accurate; mean_b is shifted back so
    that it applies to the uncentred guide. `products`: the guide's centred products
    (guide_products) when the planes are block means of a finer guide; default: the
    products of the planes themselves (the exact filter).
    """
    xp = array_module(p)
    planes = xp.asarray(planes, dtype=xp.float32)
    p = xp.asarray(p, dtype=xp.float32)
    c, n = planes.shape[0], p.shape[0]
    hw = p.shape[1:]
    gm = planes.mean(axis=(1, 2), keepdims=True)
    pm = p.mean(axis=(1, 2), keepdims=True)
    g, p = planes - gm, p - pm
    pairs = _pairs(c)
    if products is None:
        products = xp.stack([g[i] * g[j] for i, j in pairs])
    # One box pass over every product the fit needs: I, p, I·p, and I_i·I_j.
    means = box_mean(xp.concatenate([g, p, (g[:, None] * p[None]).reshape((c * n,) + hw),
                                     xp.asarray(products, dtype=xp.float32)]), r)
    mean_i, mean_p = means[:c], means[c:c + n]
    cov = means[c + n:c + n + c * n].reshape((c, n) + hw) - mean_i[:, None] * mean_p[None]  # (C, L, h, w)
    sigma = {ij: means[c + n + c * n + k] - mean_i[ij[0]] * mean_i[ij[1]] for k, ij in enumerate(pairs)}
    if c == 1:
        a = cov / (sigma[0, 0] + eps)
    else:
        a_, b_, c_ = sigma[0, 0] + eps, sigma[0, 1], sigma[0, 2]
        d_, e_, f_ = sigma[1, 1] + eps, sigma[1, 2], sigma[2, 2] + eps
        # The inverse of the symmetric [[a b c] [b d e] [c e f]] by cofactors.
        i00, i01, i02 = d_ * f_ - e_ * e_, c_ * e_ - b_ * f_, b_ * e_ - c_ * d_
        i11, i12, i22 = a_ * f_ - c_ * c_, b_ * c_ - a_ * e_, a_ * d_ - b_ * b_
        det = 1.0 / (a_ * i00 + b_ * i01 + c_ * i02)
        inv = [[i00 * det, i01 * det, i02 * det], [i01 * det, i11 * det, i12 * det],
               [i02 * det, i12 * det, i22 * det]]
        a = xp.stack([inv[k][0] * cov[0] + inv[k][1] * cov[1] + inv[k][2] * cov[2] for k in range(3)])
    b = mean_p - (a * mean_i[:, None]).sum(axis=0)  # (L, h, w)
    means = box_mean(xp.concatenate([a.reshape((c * n,) + hw), b]), r)
    mean_a = means[:c * n].reshape((c, n) + hw)
    # Back to the uncentred guide and maps: q = sum_c mean_a (I - gm) + mean_b + pm.
    mean_b = means[c * n:] + pm - (mean_a * gm[:, None]).sum(axis=0)
    return mean_a, mean_b


def constant_tiles(p_blocks, reach: int, tile: int = TILE_BLOCKS):
    """Maps as s×s block means (L, h, w) -> (constant (L, nty, ntx) bool, value (L, nty, ntx)
    float32) over tiles of tile×tile blocks (nty = ceil(h / tile)): where a map is constant
    within `reach` blocks of every block of a tile, and its value there.

    With reach = 2·r + 1 (r the fit's radius in blocks) the fitted a is 0 and b the constant
    in every window that reaches the tile, and so is the mean of b one block further (where
    the upsampling reads it): the filter's output there is exactly that constant.
    """
    xp = array_module(p_blocks)
    p = xp.asarray(p_blocks, dtype=xp.float32)
    n, h, w = p.shape
    changes = xp.zeros((n, h, w), dtype=xp.float32)  # a block differs from its right or lower neighbour
    changes[:, :, :-1] += p[:, :, 1:] != p[:, :, :-1]
    changes[:, :-1, :] += p[:, 1:, :] != p[:, :-1, :]
    near = _window_sums(_window_sums(changes, reach, -2, xp), reach, -1, xp) > 0
    nty, ntx = -(-h // tile), -(-w // tile)
    near = xp.pad(near, ((0, 0), (0, nty * tile - h), (0, ntx * tile - w)))
    busy = near.reshape(n, nty, tile, ntx, tile).any(axis=(2, 4))
    return ~busy, p[:, ::tile, ::tile]


def apply_coefficients(planes, mean_a, mean_b, s: int = 1, constant=None, tile: int = TILE_BLOCKS,
                       batch_values: int | None = None):
    """Full-resolution guide planes (C, H, W), coefficients (C, L, h, w) and (L, h, w) at s×s
    blocks (h = ceil(H/s), w = ceil(W/s); s = 1: full resolution) -> q (L, H, W) float32,
    q = sum_c up(mean_a[c]) · planes[c] + up(mean_b), up = upsample_bilinear.

    Runs over tiles of tile×tile blocks, each map's tile on its own, upsampling only the
    coefficients of the tiles in hand: batches of about batch_values coefficient values
    (default BATCH_VALUES on the CPU, to stay in the cache; all at once on a GPU), so the
    (C + 1)·L full-resolution coefficient maps are never held. `constant` (constant_tiles'
    pair) names tiles whose output is known: they are filled, not computed.
    """
    xp = array_module(planes)
    c, height, width = planes.shape
    n, h, w = mean_b.shape
    nty, ntx, side = -(-h // tile), -(-w // tile), tile * s
    # (C + 1, L, h, w) with one block of edge halo around, and past the last tile
    coef = xp.concatenate([xp.asarray(mean_a, dtype=xp.float32), xp.asarray(mean_b, dtype=xp.float32)[None]])
    coef = xp.pad(coef, ((0, 0), (0, 0), (1, nty * tile - h + 1), (1, ntx * tile - w + 1)), mode="edge")
    guide = xp.pad(xp.asarray(planes, dtype=xp.float32),
                   ((0, 0), (0, nty * side - height), (0, ntx * side - width)), mode="edge")
    guide = guide.reshape(c, nty, side, ntx, side)
    out = xp.empty((n, nty * side, ntx * side), dtype=xp.float32)
    tiles = out.reshape(n, nty, side, ntx, side)
    if constant is None:
        todo = xp.ones((n, nty, ntx), dtype=bool)
    else:
        todo = ~constant[0]
        tiles[...] = constant[1][:, :, None, :, None]
    maps, ty, tx = xp.nonzero(todo)
    if batch_values is None:
        batch_values = 1 << 62 if is_cupy(planes) else BATCH_VALUES
    step = max(1, batch_values // ((c + 1) * side * side))  # tiles per batch
    span = xp.arange(tile + 2)
    for k in range(0, int(maps.shape[0]), step):
        m, y, x = maps[k:k + step], ty[k:k + step], tx[k:k + step]
        rows = (y * tile)[:, None, None] + span[None, :, None]  # padded block rows of each tile, with halo
        cols = (x * tile)[:, None, None] + span[None, None, :]
        block = coef[:, m[:, None, None], rows, cols]  # (C + 1, B, tile + 2, tile + 2)
        up = _interpolate_phases(_interpolate_phases(block, s, -1, xp), s, -2, xp)  # (C + 1, B, side, side)
        g = guide[:, y, :, x, :]  # (B, C, side, side)
        q = up[c]
        for i in range(c):
            q += up[i] * g[:, i]
        tiles[m, y, :, x, :] = q
    return out[:, :height, :width]


def fast_guided_filter_blocks(planes, p_blocks, r: int, eps: float, s: int):
    """Guide planes (C, H, W) float32 at full resolution and maps already averaged over s×s
    blocks, (L, ceil(H/s), ceil(W/s)) -> q (L, H, W) float32. For callers that form the block
    means of their maps more cheaply than the maps (masks of patch cells);
    guided_filter is this with p_blocks = downsample_mean(p, s).

    The fit runs on the block means of the guide and the maps with radius max(1, round(r/s))
    blocks, and the guide's variances from its full-resolution products (guide_products);
    tiles where a map is constant within the filter's reach take that constant
    (constant_tiles)."""
    r = max(1, round(r / s))
    products = guide_products(planes, s) if s > 1 else None
    mean_a, mean_b = guided_coefficients(downsample_mean(planes, s), p_blocks, r, eps, products)
    return apply_coefficients(planes, mean_a, mean_b, s, constant_tiles(p_blocks, 2 * r + 1))


def guided_filter(guide, p, r: int = 16, eps: float = 1e-2, s: int = 1):
    """guide (H, W) or (H, W, 3) in [0, 1], p (H, W) or a stack (L, H, W) -> q float32, shaped
    like p (the stack axis first).

    s = 1: the exact guided filter with radius r. s > 1: the fast guided filter: a and b from
    the s×s block means of guide and p (and of the guide's products) with radius
    max(1, round(r / s)), their window means upsampled bilinearly to (H, W) and applied to the
    full-resolution guide.
    """
    xp = array_module(p)
    p = xp.asarray(p, dtype=xp.float32)
    maps = p if p.ndim == 3 else p[None]
    q = fast_guided_filter_blocks(guide_planes(guide), downsample_mean(maps, s), r, eps, s)
    return q if p.ndim == 3 else q[0]
