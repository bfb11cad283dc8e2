import pytest
import torch

from alignmesh.services.common.convert import decode, encode
from alignmesh.services.common.errors import InvalidArgument


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.float16, torch.bool])
def test_round_trip_keeps_values_dtype_and_shape(dtype):
    t = (torch.randn(3, 5) * 100).to(dtype)
    back = decode(encode(t), "x")
    assert back.dtype == dtype and back.shape == (3, 5)
    assert torch.equal(back, t)


def test_bytes_are_raw_little_endian_not_repeated_floats():
    msg = encode(torch.tensor([1.0, 2.0], dtype=torch.float32))
    assert msg.data == b"\x00\x00\x80?\x00\x00\x00@" and list(msg.shape) == [2] and msg.dtype == "float32"


def test_empty_and_scalar_tensors():
    empty = decode(encode(torch.empty(0, 7, dtype=torch.int64)), "x")
    assert empty.shape == (0, 7) and empty.dtype == torch.int64
    scalar = decode(encode(torch.tensor(3.5)), "x")
    assert scalar.shape == () and float(scalar) == 3.5


def test_large_tensor_round_trip():
    t = torch.arange(8_000_000, dtype=torch.int64)
    assert torch.equal(decode(encode(t), "x"), t)


def test_non_contiguous_input_is_encoded_in_logical_order():
    t = torch.arange(6, dtype=torch.float32).view(2, 3).t()
    assert torch.equal(decode(encode(t), "x"), t)


def test_wrong_byte_count_names_the_field():
    msg = encode(torch.zeros(4, dtype=torch.float32))
    msg.shape[:] = [5]
    with pytest.raises(InvalidArgument, match=r"prompt_ids: holds 16 bytes, shape \[5\] of float32 needs 20"):
        decode(msg, "prompt_ids")


def test_dtype_and_rank_checks_name_the_field():
    msg = encode(torch.zeros(2, 2, dtype=torch.float32))
    with pytest.raises(InvalidArgument, match="input_ids: dtype must be int64"):
        decode(msg, "input_ids", dtype=torch.int64)
    with pytest.raises(InvalidArgument, match="input_ids: must have 1 dimensions"):
        decode(msg, "input_ids", ndim=1)
    msg.dtype = "complex7"
    with pytest.raises(InvalidArgument, match="input_ids.dtype: unknown dtype"):
        decode(msg, "input_ids")


def test_decoded_tensor_is_writable_and_independent_of_message():
    msg = encode(torch.zeros(3))
    t = decode(msg, "x")
    t += 1
    assert torch.equal(decode(msg, "x"), torch.zeros(3))
