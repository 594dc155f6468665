"""The one process pool (dicomprep.parallel)."""
from dicomprep.parallel import chunk_size, map_chunked


def _square(x: int) -> int:
    return x * x


def test_map_chunked_keeps_order_on_a_pool_and_serially():
    items = list(range(300))
    want = [x * x for x in items]
    assert map_chunked(_square, items, 2, serial_below=16, chunk=(8, 128)) == want
    assert map_chunked(_square, items, 1, serial_below=16, chunk=(8, 128)) == want
    assert map_chunked(_square, [], 4, serial_below=0, chunk=(8, 128)) == []


def test_chunk_size_is_about_eight_chunks_per_worker_within_bounds():
    assert chunk_size(10_000, 4, 16, 256) == 256
    assert chunk_size(1_000, 4, 16, 256) == 31
    assert chunk_size(100, 4, 16, 256) == 16
    assert chunk_size(100, 4, 8, 128) == 8
