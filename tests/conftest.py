import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import dataclasses  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Grappler (TF's graph optimiser) runs once for every new graph: in this suite, where
# nearly every test builds small models and traces them a few times, it was a quarter to
# a third of the in-process time (test_cif_models_in_the_trainer[cif-resflow-toy]: 32 s
# with it, 24.5 s without). It does not change what a graph computes, only how fast, and
# this suite checks values, not speed. It is switched off here, in the pytest workers
# only: every trainer, evaluator and serving process a test starts (the end-to-end,
# crash-resume, distribution and SavedModel tests) runs with TF's defaults, as users do.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
  """`--dist loadgroup` with pytest >= 9: put the `xdist_group` name back into the nodeid.

  pytest-xdist 3.8 marks a grouped test by appending `@group` to `item._nodeid`, which
  pytest 9 no longer reads (the nodeid is the structured `item._id`), so every group was
  split over the workers and each module fixture was built once per worker. This appends
  the group to the last name of `item._id` instead: the scheduler sees `...@group` again.
  """
  if not getattr(config.option, "loadgroup", False):
    return
  for item in items:
    groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                     for m in item.iter_markers("xdist_group")})
    node_id = getattr(item, "_id", None)
    if not groups or "@" in item.nodeid or not dataclasses.is_dataclass(node_id):
      continue
    last = node_id.names[-1] + (f"[{node_id.params}]" if node_id.params is not None else "")
    item._id = dataclasses.replace(  # pylint: disable=protected-access
        node_id, names=node_id.names[:-1] + (f"{last}@{'_'.join(groups)}",), params=None)
