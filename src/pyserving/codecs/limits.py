"""What a request's tensors may be, checked before numpy allocates them and before TensorFlow sees them.

TensorFlow does not defend itself against every tensor a client can describe: a string tensor of
high rank kills the process. These limits are far beyond any real request and within what
TensorFlow and numpy handle; the codecs check a claimed shape (TensorProto dims, JSON nesting)
before allocating anything from it, and the data plane checks every decoded input mapping
(``check_inputs``) before validation and the model run.

Measured with TensorFlow 2.21 and numpy 2.4 (a subprocess per dtype and path, ranks 28 to 70 of
shape ``(1,) * rank``):

* DT_STRING: rank 32 works; rank 33 kills the process with SIGSEGV both ways across the
  numpy/TensorFlow boundary -- ``tf.constant`` of an object array, a Session callable's feed of
  one (what the session runtime does), and fetching a rank-33 string output (``tf.as_string`` of a
  rank-33 float).
* DT_FLOAT and DT_INT64: a Session callable runs identity, ``0.5 * x + 2`` (half_plus_two),
  a broadcasting Add and ``reduce_sum`` at every rank up to 64; numpy refuses rank 65 ("maximum
  supported dimension for an ndarray is currently 64").

So ``MAX_RANK`` is 32 for every dtype: the largest rank the string conversion survives, and one
rank for all keeps a numeric input from becoming a rank-33 string output in a rank-preserving
model. ``MAX_ELEMENTS`` (2^31 - 1) bounds each dimension and the product of the non-zero ones, so
a shape's size always fits numpy's and TensorFlow's int64 sizes and ``[0, 2^62, 2^62]`` is refused
as numpy itself would ("array is too big"). ``MAX_STRING_BYTES`` (2^31 - 1) bounds the bytes of one
string tensor's elements -- what a single protobuf message can carry at most -- so a single value
broadcast over a large shape cannot ask TensorFlow to copy petabytes.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from pyserving.errors import ServingError

MAX_RANK = 32
MAX_ELEMENTS = 2**31 - 1
MAX_STRING_BYTES = 2**31 - 1


def check_rank(rank: int, what: str) -> None:
    if rank > MAX_RANK:
        raise ServingError.invalid_argument(
            f"{what}: tensor has rank {rank}, more than the maximum rank of {MAX_RANK}")


def check_shape(dims: Sequence[int], what: str) -> int:
    """The element count of a client-claimed shape, after checking it is one a tensor can have."""
    check_rank(len(dims), what)
    if any(d < 0 for d in dims):
        raise ServingError.invalid_argument(f"{what}: tensor shape {list(dims)} has a negative dimension")
    if any(d > MAX_ELEMENTS for d in dims) or math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise ServingError.invalid_argument(
            f"{what}: tensor shape {list(dims)} is too large (more than {MAX_ELEMENTS} elements)")
    return math.prod(dims)


def check_string_bytes(total: int, what: str) -> None:
    if total > MAX_STRING_BYTES:
        raise ServingError.invalid_argument(
            f"{what}: string tensor holds {total} bytes, more than the maximum of {MAX_STRING_BYTES}")


def string_bytes(array: np.ndarray) -> int:
    """Total length of an object array's bytes/str elements (0 if it holds anything else)."""
    try:
        return sum(map(len, array.ravel().tolist()))
    except TypeError:  # not a string tensor; validation names the dtype problem
        return 0


def check_inputs(inputs: Mapping[str, np.ndarray]) -> None:
    """Every decoded input is a tensor TensorFlow can take (INVALID_ARGUMENT naming it if not)."""
    for alias, array in inputs.items():
        what = f"input '{alias}'"
        check_shape(array.shape, what)
        if array.dtype == object:
            check_string_bytes(string_bytes(array), what)


__all__ = ["MAX_ELEMENTS", "MAX_RANK", "MAX_STRING_BYTES", "check_inputs", "check_rank", "check_shape",
           "check_string_bytes", "string_bytes"]
