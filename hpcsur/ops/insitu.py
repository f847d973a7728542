"""In-situ encoding: simulate, label and encode in one pass, and store only what the latent losses need.

A stored LJ-51200 frame is 2.4 MB (float64); 50,000 of them would be 120 GB. The latent losses need per frame
only d^2 + d + 1 numbers per draw (the least-squares triple of L_x,p, :mod:`hpcsur.learn.encode`), z and the
index sets. A job with ``[insitu] autoencoder = "<job.toml>"`` takes that job's trained autoencoder (trained on a
stored subset), frozen, and its ``generate`` writes the *encoded* store at ``[store] path``: each writer rank
gathers a shard's frames as ``generate`` always does, encodes them with :func:`hpcsur.learn.encode.encode_block`
-- the same function the encode stage applies to a stored shard, so the arrays are those of generate -> encode on
the same frames -- and writes the encoding in place of the states. MPI-parallel, one writer per shard, checksummed
and resumable as any store: a resumed trajectory is recomputed from its initial state (no state is stored to
restart from), writing only its missing shards, so the store is the one an uninterrupted run writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import JobSpec, load_job


def autoencoder_job(spec: JobSpec) -> JobSpec:
    """The job whose autoencoder an in-situ job uses, checked against it: same [system], same [autoencoder]."""
    where = f"{spec.source}: [insitu] autoencoder = {spec.insitu.autoencoder!r}"
    try:
        home = load_job(spec.insitu.autoencoder)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    if home.insitu is not None:
        raise InputError(f"{where}: that job is in situ itself; name the job that trains the autoencoder")
    mine, theirs = spec.to_dict(), home.to_dict()
    for table in ("system", "autoencoder"):
        a, b = mine.get(table, {}), theirs.get(table, {})
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differ:
            raise InputError(f"{where}: [{table}] {differ[0]} = {a.get(differ[0])!r} here but "
                             f"{b.get(differ[0])!r} there; an in-situ job encodes with that job's autoencoder, "
                             f"so its [{table}] must be the same")
    return home


@dataclass
class InSituEncoder:
    """The frozen autoencoder of an in-situ job and what its encoded store records about it."""

    autoencoder: object            # hpcsur.learn.autoencoder.ClosureAutoencoder, float64, eval mode
    layout: object                 # hpcsur.systems.base.Layout of the states
    right_inverse: str
    home: str                      # the job spec that trained it
    digest: str

    @classmethod
    def for_job(cls, spec: JobSpec, layout) -> "InSituEncoder":
        """Load the trained autoencoder of ``spec``'s [insitu] job (one line if it is not trained)."""
        from hpcsur.learn.encode import model_digest
        from hpcsur.learn.stages import load_autoencoder

        if spec.split.observable_floor is not None:
            raise InputError(f"{spec.source}: [insitu] with [split] observable_floor is not supported (the frames "
                             "in use are known only once a trajectory is complete); leave the floor out")
        home = autoencoder_job(spec)
        if not (Path(home.run_dir) / "autoencoder" / "done.json").exists():
            raise InputError(f"{spec.source}: [insitu] autoencoder = {spec.insitu.autoencoder!r}: its autoencoder "
                             f"is not trained (no {home.run_dir}/autoencoder/done.json); run `hpcsur train-ae "
                             f"{spec.insitu.autoencoder}` first")
        ae = load_autoencoder(home.store.path, Path(home.run_dir), home.autoencoder).double().eval()
        return cls(ae, layout, spec.autoencoder.right_inverse, spec.insitu.autoencoder, model_digest(ae.state_dict()))

    def schema(self, trajectories):
        """The encoded schema of the trajectory store generate would write, with the index sets."""
        return trajectories.encoded(self.autoencoder.shape.latent_dim, index_sets=True)

    def attrs(self, trajectory_attrs: dict) -> dict:
        """The trajectory store's attributes plus what the encode stage records (the latent stages read both)."""
        shape = self.autoencoder.shape
        out = {**trajectory_attrs, "source": "in situ", "insitu_autoencoder_job": self.home,
               "source_spec_hash": trajectory_attrs["data_hash"], "autoencoder": self.digest,
               "latent_dim": shape.latent_dim, "n_obs": shape.n_obs,
               "p_eff": trajectory_attrs["k"] / int(trajectory_attrs["layout"]["n_blocks"]),
               "right_inverse": self.right_inverse}
        if shape.observable_scale:
            out["observable_scale"] = list(shape.observable_scale)
        return out

    def encode(self, block: dict) -> dict:
        """A generated shard (states and labels) -> its encoded shard (no states)."""
        from hpcsur.learn.encode import encode_block
        from hpcsur.learn.losses import RankDeficientJacobian

        try:
            encoded = encode_block(self.autoencoder, self.layout, block["x"], block["idx"], block["f_partial"],
                                   block.get("f_full"), self.right_inverse)
        except RankDeficientJacobian as err:
            raise err.at(f"trajectory {int(block['traj'][err.row])}, step {int(block['step'][err.row])} "
                         f"(t = {float(block['t'][err.row]):.6g})", "generate (in situ)") from None
        return {"t": block["t"], "traj": block["traj"], "idx": np.asarray(block["idx"]), **encoded}
