"""Stage provenance: which spec fields every stage output was made from, and what changed since.

Each stage depends on the resolved spec fields below *and on everything its inputs depended on*
(so a change upstream makes every later stage stale):

    generate      [system] [simulation] [initial] [labels]                  (recorded in the store's attributes)
    train-ae      + [autoencoder] (but right_inverse) [split]              <run>/provenance/train-ae.json
    encode        + [autoencoder] right_inverse                             <run>/provenance/encode.json
    train-latent  + [latent] (its own loss, size, seed), [evaluate] substeps
                    when models are selected by validation rollouts         <run>/latent/<name>/inputs.json
    evaluate      + [latent] [evaluate]                                     <run>/provenance/evaluate.json

A stage writes its record when it *starts*, so partial outputs are attributed too; ``hpcsur run``
compares the records with the spec and redoes a stale stage and every stage after it (or, with
``--keep``, refuses with one line naming the changed fields). ``[train]``, ``[store]``,
``[output]``, ``[slurm]`` and ``[campaign]`` say how and where, not what: they never make a stage stale.
"""
from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

from hpcsur.errors import InputError
from hpcsur.ops.jobspec import DATA_SECTIONS, JobSpec, without_late_defaults
from hpcsur.ops.stage_table import PIPELINE as STAGES  # the pipeline stages with outputs

#: [latent] keys that choose *which* runs exist rather than what each run is
RUN_SELECTORS = ("losses", "seeds", "equivalent_data")


def flatten(tables: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists and scalars are leaves)."""
    out = {}
    for key, value in tables.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _tables(spec: JobSpec, names) -> dict[str, Any]:
    everything = spec.to_dict()
    return without_late_defaults(flatten({name: everything.get(name, {}) for name in names}))


def stage_inputs(spec: JobSpec, stage: str) -> dict[str, Any]:
    """The flattened spec fields ``stage``'s outputs depend on (cumulative over earlier stages)."""
    if stage not in STAGES or stage == "train-latent":
        raise ValueError(f"stage_inputs: {stage!r} (train-latent has one record per run: run_inputs)")
    data = _tables(spec, DATA_SECTIONS)
    if stage == "generate":
        return data
    ae = {**data, **_tables(spec, ("autoencoder", "split"))}
    if stage == "train-ae":   # the right inverse is chosen at encoding; the trained weights do not depend on it
        return {k: v for k, v in ae.items() if k != "autoencoder.right_inverse"}
    if stage == "encode":
        return ae
    return {**ae, **_tables(spec, ("latent", "evaluate"))}


def run_inputs(spec: JobSpec, loss: str, size: int, seed: int) -> dict[str, Any]:
    """The fields one latent run (loss, equivalent-data size, seed) depends on."""
    latent = {k: v for k, v in _tables(spec, ("latent",)).items()
              if k.split(".")[1] not in RUN_SELECTORS}
    own = {"run.loss": loss, "run.equivalent_data": size, "run.seed": seed}
    rollout = {"evaluate.substeps": spec.evaluate.substeps} if spec.latent.select == "val_rollout" else {}
    return {**stage_inputs(spec, "encode"), **latent, **own, **rollout}


def changed(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ. Outputs without a record (made before records existed)
    have unknown provenance: they are kept, and say so (:func:`unrecorded`), not redone."""
    if old is None:
        return []
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def unrecorded(spec: JobSpec, stage: str) -> bool:
    """True when ``stage`` has outputs but no provenance record (written by an older hpcsur)."""
    if stage == "generate":
        return Path(spec.store.path).exists() and store_inputs(spec.store.path) is None
    if stage == "train-latent":
        latent = Path(spec.run_dir) / "latent"
        return latent.exists() and any(not (f / "inputs.json").exists() for f in latent.iterdir() if f.is_dir())
    main = record_path(spec, stage)
    return not main.exists() and any(p.exists() for p in stage_outputs(spec, stage) if p != main)


def write_record(path: Path, inputs: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"inputs": inputs}, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_path(spec: JobSpec, stage: str) -> Path:
    return Path(spec.run_dir) / "provenance" / f"{stage}.json"


def record_stage(spec: JobSpec, stage: str) -> None:
    """Write the provenance record of ``stage`` (call when the stage starts, on one rank)."""
    write_record(record_path(spec, stage), stage_inputs(spec, stage))


def store_inputs(path: str) -> dict[str, Any] | None:
    """The data fields a store was generated from (its resolved spec attribute)."""
    from hpcsur import store

    try:
        text = store.open_dataset(path, verify=False).attrs.get("resolved_spec")
        return (without_late_defaults(flatten({k: v for k, v in tomllib.loads(text).items() if k in DATA_SECTIONS}))
                if text else None)
    except (InputError, tomllib.TOMLDecodeError, TypeError):
        return None


def stage_outputs(spec: JobSpec, stage: str) -> list[Path]:
    """What ``stage`` writes (removed when it is redone)."""
    from hpcsur.ops.stage_table import encoded_path

    run = Path(spec.run_dir)
    return {"generate": [Path(spec.store.path)],
            "train-ae": [run / "autoencoder", record_path(spec, "train-ae")],
            "encode": [Path(encoded_path(spec)), record_path(spec, "encode")],
            "train-latent": [run / "latent"],
            "evaluate": [run / "report.json", run / "plots", record_path(spec, "evaluate"),
                         Path(spec.output.results) / f"{spec.name}.json"]}[stage]


def stale(spec: JobSpec, stage: str) -> list[str]:
    """Changed fields of ``stage``'s existing outputs ([] when current or when nothing exists yet)."""
    outputs = [p for p in stage_outputs(spec, stage) if p.exists()]
    if stage == "generate":
        return changed(store_inputs(spec.store.path), stage_inputs(spec, "generate")) if outputs else []
    if stage == "train-latent":
        from hpcsur.learn.stages import run_name

        latent = Path(spec.run_dir) / "latent"
        fields: set[str] = set()
        for loss, size, seed in spec.latent.models():
            folder = latent / run_name(loss, size, seed)
            if folder.exists():
                fields.update(changed(read_record(folder / "inputs.json"), run_inputs(spec, loss, size, seed)))
        return sorted(fields)
    main = record_path(spec, stage)
    if not any(p.exists() for p in outputs if p != main):
        return []
    return changed(read_record(main), stage_inputs(spec, stage))


def refuse_if_stale(spec: JobSpec, stage: str) -> None:
    """One line when ``stage``'s existing outputs were made from other spec fields: a stage run by
    itself must not mix them with new ones (``hpcsur run`` redoes such stages)."""
    fields = stale(spec, stage)
    if fields:
        raise InputError(f"{stage}: the outputs in {spec.run_dir if stage != 'generate' else spec.store.path} were "
                         f"made from other spec fields ({short(fields)}); `hpcsur run` redoes the stage, or remove "
                         "them, or use another [output] dir")


def short(fields: list[str], shown: int = 6) -> str:
    return ", ".join(fields[:shown]) + (f" and {len(fields) - shown} more" if len(fields) > shown else "")


def clear(spec: JobSpec, stage: str, only_stale_runs: bool = True) -> list[Path]:
    """Remove the outputs of ``stage`` (for train-latent: of its stale runs only); returns what went."""
    gone = []
    if stage == "train-latent" and only_stale_runs:
        from hpcsur.learn.stages import run_name

        for loss, size, seed in spec.latent.models():
            folder = Path(spec.run_dir) / "latent" / run_name(loss, size, seed)
            if folder.exists() and changed(read_record(folder / "inputs.json"), run_inputs(spec, loss, size, seed)):
                shutil.rmtree(folder)
                gone.append(folder)
        return gone
    for path in stage_outputs(spec, stage):
        if path.is_dir():
            shutil.rmtree(path)
            gone.append(path)
        elif path.exists():
            path.unlink()
            gone.append(path)
    return gone
