import torch

from alignmesh.services.sync import buckets as bk


def named():
    g = torch.Generator().manual_seed(0)
    return [("a", torch.randn(10, 4, generator=g)), ("b", torch.randn(3, generator=g).to(torch.bfloat16)),
            ("c", torch.randn(100, generator=g)), ("d", torch.randn(2, 2, generator=g))]


def test_plan_groups_by_dtype_and_respects_bucket_size():
    plan = bk.plan(bk.specs_of(named()), bucket_bytes=200)
    # float32: a (160 B) | c (400 B, alone: larger than a bucket) | d (16 B); bfloat16: b
    assert [[s.name for s in b.specs] for b in plan] == [["a"], ["c"], ["d"], ["b"]]
    assert [b.dtype for b in plan] == [torch.float32] * 3 + [torch.bfloat16]
    big = bk.plan(bk.specs_of(named()), bucket_bytes=10_000)
    assert [[s.name for s in b.specs] for b in big] == [["a", "c", "d"], ["b"]]
    assert sum(b.nbytes for b in big) == 160 + 400 + 16 + 6


def test_pack_unpack_round_trip_is_exact():
    tensors = dict(named())
    for bucket in bk.plan(bk.specs_of(named()), bucket_bytes=300):
        flat = bk.pack(bucket, tensors)
        assert flat.dtype == bucket.dtype and flat.numel() == bucket.numel
        for name, t in bk.unpack(bucket, flat).items():
            assert torch.equal(t, tensors[name])


def test_checksum_detects_one_flipped_bit_and_a_swap():
    flat = torch.randn(1000)
    base = bk.checksum(flat)
    bits = flat.clone().view(torch.int32)
    bits[517] ^= 1
    assert bk.checksum(bits.view(torch.float32)) != base
    swapped = flat.clone()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert bk.checksum(swapped) != base
    assert bk.checksum(flat.clone()) == base


def test_checksum_known_values_cpu_xxh3_and_device_sums():
    import xxhash

    # XXH3_64 of no bytes is 0x2D06800538D394C2 (the xxHash specification's test vector); fits an int64 as is
    assert bk.checksum(torch.zeros(0, dtype=torch.uint8)) == (0x2D06800538D394C2, 0)
    digest = xxhash.xxh3_64_intdigest(b"\x01\x02\x03")
    signed = digest - (1 << 64) if digest >= 1 << 63 else digest
    assert bk.checksum(torch.tensor([1, 2, 3], dtype=torch.uint8)) == (signed, 3)
    assert all(-(1 << 63) <= bk.checksum(torch.randn(n))[0] < 1 << 63 for n in range(1, 40))  # an int64 header
    assert bk.checksum(torch.ones(2, dtype=torch.bfloat16))[1] == 4
    assert bk.device_checksum(torch.tensor([1, 2, 3], dtype=torch.uint8)) == (0x030201, 0x030201)
    # words 1 and 2 at positions 0 and 1: s1 = 3, s2 = 1*1 + 2*2 = 5
    assert bk.device_checksum(torch.tensor([1, 2], dtype=torch.int32)) == (3, 5)


def test_device_checksum_detects_a_flip_and_a_swap():
    flat = torch.randn(1000)
    base = bk.device_checksum(flat)
    bits = flat.clone().view(torch.int32)
    bits[517] ^= 1
    assert bk.device_checksum(bits.view(torch.float32)) != base
    swapped = flat.clone()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert bk.device_checksum(swapped) != base


def test_header_layout():
    plan = bk.plan(bk.specs_of(named()), bucket_bytes=10_000)
    h = bk.header(7, plan, [(1, 2), (3, 4)])
    assert h.tolist() == [7, 2, 582, 1, 2, 3, 4] and h.numel() == bk.header_len(2)
