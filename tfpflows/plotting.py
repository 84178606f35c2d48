"""PNG figures of flows: 2D densities `exp(log p)` on a grid, 2D samples, image grids.

Uses matplotlib's Agg backend (no display needed). Every function writes one PNG to `path`
and returns `path`: the folder is created if missing, and the file appears whole (written
beside it under a temporary name, then renamed), so a reader never sees half a PNG.
"""

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

DEFAULT_BOUNDS = ((-4.0, 4.0), (-4.0, 4.0))


def _save(fig, path):
  """`fig` to `path` atomically: written as `.NAME.tmp-PID.EXT` beside it, then renamed."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}{ext}")
  try:
    fig.savefig(tmp, dpi=100, format=ext.lstrip(".").lower() or "png")
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)


def _numpy(x):
  return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def bounds_2d(points, *, margin=0.1, quantile=0.005):
  """Square plot limits `((x0, x1), (y0, y1))` covering `points` [n, 2] between the
  `quantile` and `1 - quantile` quantiles, widened by `margin` of the range on each side."""
  points = _numpy(points)
  lo = np.quantile(points, quantile, axis=0)
  hi = np.quantile(points, 1.0 - quantile, axis=0)
  center, half = (lo + hi) / 2.0, (1.0 + 2.0 * margin) * np.max(hi - lo) / 2.0
  half = max(float(half), 1e-3)
  return tuple((float(c - half), float(c + half)) for c in center)


def _grid(bounds, grid_size):
  """`grid_size`^2 points `[N, 2]` (float32, rows of constant y) covering `bounds`."""
  (x0, x1), (y0, y1) = bounds
  gx, gy = np.meshgrid(np.linspace(x0, x1, grid_size, dtype=np.float32),
                       np.linspace(y0, y1, grid_size, dtype=np.float32))
  return np.stack([gx.ravel(), gy.ravel()], axis=-1)


def plot_density_2d(log_prob_fn, path, *, bounds=None, reference=None, grid_size=200,
                    title="model density"):
  """Heatmap of `p(x) = exp(log_prob_fn(x))` on a `grid_size`^2 grid.

  Args:
    log_prob_fn: maps a float32 numpy array `[N, 2]` to `[N]` log-densities (numpy or
      tensor).
    path: PNG file to write.
    bounds: `((x0, x1), (y0, y1))`; default: `bounds_2d(reference)` if `reference` is
      given, else `[-4, 4]^2`.
    reference: optional data points `[n, 2]` that only set the default bounds.
    grid_size: grid points per axis.
    title: figure title.
  """
  if bounds is None:
    bounds = bounds_2d(reference) if reference is not None else DEFAULT_BOUNDS
  (x0, x1), (y0, y1) = bounds
  grid = _grid(bounds, grid_size)
  log_p = _numpy(log_prob_fn(grid)).reshape(grid_size, grid_size)
  density = np.exp(np.where(np.isfinite(log_p), log_p, -np.inf))

  fig, ax = plt.subplots(figsize=(5.6, 5))
  image = ax.imshow(density, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis",
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="$p(x)$")
  ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", xlim=(x0, x1), ylim=(y0, y1))
  ax.set_aspect("equal")
  fig.tight_layout()
  _save(fig, path)
  return path


def plot_density_pair(target_log_prob_fn, model_log_prob_fn, path, *, bounds=None,
                      grid_size=200, titles=("target", "fitted flow")):
  """Two heatmaps side by side, the target's `exp(log p)` and the model's, on one grid.

  Each panel is normalised to its own maximum, so an unnormalised target (VI) compares
  directly with the fitted density.
  """
  return plot_density_panels((target_log_prob_fn, model_log_prob_fn), path, bounds=bounds,
                             grid_size=grid_size, titles=titles)


def plot_density_panels(log_prob_fns, path, *, titles, bounds=None, grid_size=200):
  """Heatmaps of `exp(log p)` of each function in a row, on one grid, each normalised to
  its own maximum (e.g. a flow beside its CIF, or a target beside a fit)."""
  bounds = bounds if bounds is not None else DEFAULT_BOUNDS
  (x0, x1), (y0, y1) = bounds
  grid = _grid(bounds, grid_size)
  fig, axes = plt.subplots(1, len(log_prob_fns), figsize=(5 * len(log_prob_fns), 5))
  for ax, fn, title in zip(np.atleast_1d(axes), log_prob_fns, titles):
    log_p = _numpy(fn(grid)).reshape(grid_size, grid_size).astype(np.float64)
    log_p = np.where(np.isfinite(log_p), log_p, -np.inf)
    ax.imshow(np.exp(log_p - np.max(log_p)), origin="lower", extent=(x0, x1, y0, y1),
              cmap="viridis", interpolation="nearest")
    ax.set(title=title, xlabel="$x_1$", ylabel="$x_2$", xlim=(x0, x1), ylim=(y0, y1))
    ax.set_aspect("equal")
  fig.tight_layout()
  _save(fig, path)
  return path


def plot_curve(values, path, *, ylabel, xlabel="step", reference=None, reference_label=None,
               smooth=50, title=None):
  """A learning curve: `values` per step (faint), their running mean over `smooth` steps,
  and an optional horizontal `reference` line (e.g. the exact log Z above an ELBO)."""
  values = _numpy(values).astype(np.float64)
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = np.arange(1, len(values) + 1)
  ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
  if len(values) >= smooth > 1:
    kernel = np.ones(smooth) / smooth
    ax.plot(steps[smooth - 1:], np.convolve(values, kernel, mode="valid"), color="tab:blue",
            label=f"{ylabel} (mean of {smooth})")
  if reference is not None:
    ax.axhline(reference, color="tab:red", linestyle="--", label=reference_label)
  finite = values[np.isfinite(values)]
  if finite.size:   # the first steps can be far below: show the last 90 %'s range
    tail = finite[len(finite) // 10:]
    lo, hi = np.min(tail), max(np.max(tail), reference if reference is not None else -np.inf)
    pad = 0.1 * max(hi - lo, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if ax.get_legend_handles_labels()[0]:   # a short curve without a reference has no labels
    ax.legend(loc="lower right")
  fig.tight_layout()
  _save(fig, path)
  return path


def plot_samples_2d(samples, path, *, reference=None, bounds=None, title="model samples"):
  """Scatter of `samples` [n, 2]; with `reference` [m, 2], a data panel on its left.

  Both panels share `bounds` (default: `bounds_2d` of the reference, else of the samples),
  so points far outside the data are cut off rather than squeezing the view.
  """
  samples = _numpy(samples)
  panels = [(samples, title)]
  if reference is not None:
    reference = _numpy(reference)
    panels.insert(0, (reference, "data"))
  if bounds is None:
    bounds = bounds_2d(reference if reference is not None else samples)
  (x0, x1), (y0, y1) = bounds

  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
  for ax, (points, name) in zip(axes[0], panels):
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, linewidths=0)
    ax.set(title=f"{name} (n={len(points)})", xlabel="$x_1$", ylabel="$x_2$",
           xlim=(x0, x1), ylim=(y0, y1))
    ax.set_aspect("equal")
  fig.tight_layout()
  _save(fig, path)
  return path


def _tile(images, ncols):
  """`[N, H, W, C]` -> one `[rows*(H+1)+1, ncols*(W+1)+1, C]` uint8 mosaic, 1px gaps."""
  images = _numpy(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, C] with C in {{1, 3}}; got shape {images.shape}")
  if images.dtype != np.uint8:
    images = np.floor(np.clip(np.nan_to_num(images.astype(np.float64)), 0.0, 255.0))
    images = images.astype(np.uint8)
  n, h, w, c = images.shape
  rows = math.ceil(n / ncols)
  mosaic = np.full((rows * (h + 1) + 1, ncols * (w + 1) + 1, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, ncols)
    mosaic[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = image
  return mosaic


def save_image_grid(images, path, *, title=None, ncols=None):
  """Writes images as a grid.

  Args:
    images: `[N, H, W, C]`, C in {1, 3}: uint8, or floats in `[0, 256)` (pixel `floor(x)`,
      clipped to [0, 255]); or a dict `{panel title: such images}` for panels side by side
      (e.g. samples at several temperatures).
    path: PNG file to write.
    title: figure title (a single grid) or overall title (panels).
    ncols: images per row; default `ceil(sqrt(N))`.
  """
  panels = dict(images) if isinstance(images, dict) else {title or "": images}
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4), squeeze=False)
  for ax, (name, batch) in zip(axes[0], panels.items()):
    n = len(_numpy(batch))
    mosaic = _tile(batch, ncols or math.ceil(math.sqrt(n)))
    if mosaic.shape[-1] == 1:
      ax.imshow(mosaic[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
      ax.imshow(mosaic, interpolation="nearest")
    ax.set_title(name)
    ax.set_axis_off()
  if isinstance(images, dict) and title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  return path
