"""hpcsur.store: sharded zarr v3 datasets of trajectories, partial labels and observables.

One zarr group per dataset; every array is sharded along the global frame axis only, and shard
``s`` has exactly one writer, rank ``s % size``. Completion of a shard is recorded atomically after
its data is durable, which makes resume after a crash a matter of rewriting unrecorded shards.
See ``storage/README.md`` for the on-disk schema and protocol.

Modules: :mod:`.schema` (pure layout), :mod:`.writer` (create + write shards), :mod:`.manifest`
(progress records, :func:`progress` — the one answer to "is it complete?" —, consolidate, verify, info), :mod:`.lock` (one generator per store),
:mod:`.reader` (open_dataset, iter_shards).
"""
from hpcsur.store.lock import StoreLock, acquire_lock
from hpcsur.store.manifest import (BadShard, Progress, VerifyReport, completed_shards, consolidate, info,
                                   progress, read_manifest, shard_file, verify)
from hpcsur.store.reader import Dataset, open_dataset, rank_shards, shard_order
from hpcsur.store.schema import (ArraySpec, DatasetSchema, choose_chunk_frames,
                                 choose_frames_per_shard, make_schema, owned_shards, shard_owner)
from hpcsur.store.writer import (REQUIRED_ATTRS, ShardWriter, create_dataset, exists, is_dataset,
                                 synthetic_shard, write_shard)

__all__ = [
    "ArraySpec", "BadShard", "Dataset", "DatasetSchema", "REQUIRED_ATTRS", "ShardWriter",
    "StoreLock", "VerifyReport", "acquire_lock", "choose_chunk_frames", "choose_frames_per_shard",
    "completed_shards", "consolidate", "create_dataset", "exists", "info", "is_dataset", "make_schema", "open_dataset",
    "owned_shards", "Progress", "progress", "rank_shards", "read_manifest", "shard_file", "shard_order", "shard_owner",
    "synthetic_shard", "verify", "write_shard",
]
