"""The README's example runs as written (examples/quickstart.py)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_example_runs():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py")],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for line in ("joint log-prob:", "stacked log-prob:", "served log-prob:",
               "served samples at T=0.8: (4, 2)"):
    assert line in proc.stdout
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  with open(os.path.join(ROOT, "examples", "quickstart.py")) as f:
    body = f.read().split('"""', 2)[2].strip()
  assert body in readme, "README's example and examples/quickstart.py differ"


def test_vi_example_is_the_readme_code_and_its_pictures_exist():
  """examples/vi_banana.py takes about a minute, too long for the suite: run by hand (it wrote
  docs/img/vi_banana_*.png); here the README's code is checked to be that file."""
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  with open(os.path.join(ROOT, "examples", "vi_banana.py")) as f:
    body = f.read().split('"""', 2)[2].strip()
  assert body in readme, "README's VI example and examples/vi_banana.py differ"
  for name in ("vi_banana_elbo.png", "vi_banana_density.png"):
    assert os.path.getsize(os.path.join(ROOT, "docs", "img", name)) > 1000
    assert f"docs/img/{name}" in readme
