"""PNG writing: folders created, files appear whole, a failed write leaves nothing behind."""

import os

import numpy as np
import pytest

from tfpflows import plotting


def test_plot_creates_the_folder_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / "new" / "deeper" / "curve.png"
  assert plotting.plot_curve(np.linspace(0., 1., 20), str(path), ylabel="ELBO") == str(path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(path.parent)) == ["curve.png"]
  samples = np.random.default_rng(0).standard_normal((200, 2))
  plotting.plot_samples_2d(samples, str(tmp_path / "s" / "samples.png"))
  assert (tmp_path / "s" / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_plot_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  """matplotlib refuses an unknown format: the file already at `path` stays as it was."""
  path = tmp_path / "curve.notaformat"
  path.write_bytes(b"old")
  with pytest.raises(ValueError):
    plotting.plot_curve(np.arange(5.), str(path), ylabel="y")
  assert path.read_bytes() == b"old"
  assert sorted(os.listdir(tmp_path)) == ["curve.notaformat"]
