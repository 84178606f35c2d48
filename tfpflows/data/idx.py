"""IDX files (the MNIST format, LeCun et al.), gzip-compressed or not, as flow data.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions `k`), `k` big-endian uint32 sizes, then the values in C order, big-endian.
`t10k-images-idx3-ubyte(.gz)` is `[10000, 28, 28]` uint8. The images come back as
`[N, H, W, 1]` uint8 (`[N, H, W, C]` for an idx4 file), vectors (`idx2`) as `[N, d]`
float32, and the split is the `.npy` one (`arrays.split_rows`): the last 10% of the rows,
in file order, are held out. For the MNIST test split that is images 9,000 to 9,999.
"""

import gzip
import os
import re

import numpy as np

from tfpflows.data import arrays

# type code: big-endian numpy dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_NAME = re.compile(r"(idx\d-ubyte|\.idx\d?)(\.gz)?$")


def is_idx_path(path):
  """Whether `path` is named like an IDX file (`*-idx3-ubyte`, `*.idx`, optionally `.gz`)."""
  return bool(_NAME.search(os.path.basename(str(path))))


def read_idx(path):
  """The array in the IDX file `path` (gzip detected by its magic bytes), native byte order.

  Raises:
    ValueError: one line: a missing, unreadable or truncated file, or not IDX.
  """
  if os.path.isdir(path):
    raise ValueError(f"dataset {path!r} is a directory; expected an IDX file")
  if not os.path.isfile(path):
    raise ValueError(f"dataset file {path!r} does not exist")
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == b"\x1f\x8b":
      raw = gzip.decompress(raw)
  except (OSError, EOFError) as e:
    raise ValueError(f"cannot read {path!r}: {arrays.first_line(e)}") from None
  if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _TYPES or raw[3] < 1:
    raise ValueError(f"{path!r} is not an IDX file (expected 2 zero bytes, a type code and "
                     f"the number of dimensions; got {raw[:4]!r})")
  ndim, dtype = raw[3], np.dtype(_TYPES[raw[2]])
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path!r} is truncated: its header needs {header} bytes, the file has "
                     f"{len(raw)}")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(raw) != expected:
    raise ValueError(f"{path!r} holds {len(raw)} bytes; its header ({' x '.join(map(str, shape))}"
                     f" of {dtype.name}) says {expected}: truncated or not one IDX array")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(path):
  """Reads, validates and splits `path`: `(train, heldout)` numpy arrays, as `load_npy`.

  `[N, H, W]` and `[N, H, W, C]` must be uint8 images (`C` in {1, 3}), `[N, d]` any real
  numbers (float32 vectors). Labels (`[N]`, idx1) are refused.
  """
  array = read_idx(path)
  if array.ndim == 1:
    raise ValueError(f"{path!r} holds {array.shape[0]} labels (idx1); expected images "
                     f"(idx3, e.g. t10k-images-idx3-ubyte.gz) or vectors (idx2)")
  if array.ndim == 3:
    array = array[..., None]
  return arrays.split_rows(arrays.check_array(array, path), path)
