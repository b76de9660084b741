"""Resumable chunked processing and sharding across ranks."""
import numpy as np
import pytest

from deephemnma.runtime.chunks import ChunkStore
from deephemnma.runtime.distributed import Rank


def _square(indices):
    values = np.asarray(list(indices), dtype=np.float64)
    return {'index': values.astype(np.int64), 'square': values ** 2}


def test_killed_job_resumes_and_gives_the_same_result(tmp_path):
    calls = []

    def dying(indices):
        if len(calls) == 2:
            raise KeyboardInterrupt('killed')
        calls.append(indices.start)
        return _square(indices)

    store = ChunkStore(tmp_path / 'job', count=23, chunk_size=5, settings={'what': 'square'})
    with pytest.raises(KeyboardInterrupt):
        store.run(dying)
    assert [store.is_done(c) for c in range(store.num_chunks)] == [True, True, False, False, False]
    resumed = ChunkStore(tmp_path / 'job', count=23, chunk_size=5, settings={'what': 'square'})
    recomputed = []
    resumed.run(lambda idx: (recomputed.append(idx.start), _square(idx))[1])
    assert recomputed == [10, 15, 20]
    merged = resumed.merged()
    np.testing.assert_array_equal(merged['index'], np.arange(23))
    np.testing.assert_array_equal(merged['square'], np.arange(23) ** 2)


def test_other_settings_are_refused(tmp_path):
    ChunkStore(tmp_path / 'job', count=10, chunk_size=5, settings={'snr': 0.1})
    with pytest.raises(RuntimeError, match='other settings'):
        ChunkStore(tmp_path / 'job', count=10, chunk_size=5, settings={'snr': 1.0})


def test_ranks_share_chunks_without_overlap(tmp_path):
    store = ChunkStore(tmp_path / 'job', count=50, chunk_size=4)
    ranks = [Rank(r, 3, r) for r in range(3)]
    pending = [store.pending(rank) for rank in ranks]
    assert sorted(sum(pending, [])) == list(range(store.num_chunks))
    for rank in ranks:
        store.run(_square, rank)
    np.testing.assert_array_equal(store.merged()['index'], np.arange(50))


def test_merging_incomplete_job_is_refused(tmp_path):
    store = ChunkStore(tmp_path / 'job', count=10, chunk_size=5)
    store.save(0, _square(range(5)))
    with pytest.raises(RuntimeError, match='1 chunk'):
        store.merged()
