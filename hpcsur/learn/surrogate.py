"""The trained surrogate as one file: encoder, decoder and latent model, usable without the job or the store.

An export (``hpcsur export``) is a zip archive of two members, never a pickle:

* ``manifest.json``: ``format`` = "hpcsur-surrogate", ``version``; the system kind, its parameters and state layout
  (what the analytic observables phi* are built from), the observables' names, the time between the data's frames
  ``frame_dt`` and the evaluation's RK4 ``substeps``, the autoencoder's and the latent model's shapes, and where it
  came from: job, spec and data hashes, the commit, the loss / size / seed, and the model's evaluation numbers;
* ``arrays.npz``: every parameter and buffer of both networks as plain numpy arrays (``autoencoder.<name>``,
  ``latent.<name>``), read with ``allow_pickle=False``.

Loading rebuilds the modules from the shapes and copies the arrays in, so it runs no code from the file.

The surrogate of a microscopic state x is the latent ODE dz/dt = g(z) started at z(0) = phi(x), integrated with
classical RK4; z = (phi*, phi_hat), so the first ``n_obs`` latent coordinates are the observables themselves (times
the fixed factors ``observable_scale`` where the job set them; :meth:`Surrogate.observables` divides them out)::

    s = Surrogate.load("pp.hpcsur")
    z = s.rollout(x0, times)          # (len(times), batch, d), float64
    s.observables(z)                  # (len(times), batch, n_obs)
    s.decode(z[-1])                   # reconstructed microscopic states
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from hpcsur.errors import InputError
from hpcsur.learn.autoencoder import AutoencoderShape, ClosureAutoencoder
from hpcsur.learn.latent import LatentDynamics, LatentShape, rk4_step
from hpcsur.learn.observables import observable_from_attrs

FORMAT = "hpcsur-surrogate"
#: The export format this hpcsur writes and the newest it reads.
VERSION = 1
#: The arithmetic a surrogate may run in; float32 about halves the latent model's cost (check it with
#: :meth:`Surrogate.deviation` against a float64 one).
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def rk4_path(g, z0: torch.Tensor, times: np.ndarray, dt: float) -> torch.Tensor:
    """z at ``times`` (ascending, times[0] the time of z0) by classical RK4: each interval [t_i, t_(i+1)] in
    n = ceil((t_(i+1) - t_i) / dt - 1e-9) equal steps, so outputs at multiples of dt fall on the steps exactly.
    Returns (len(times), *z0.shape)."""
    out, z = [z0], z0
    for a, b in zip(times[:-1], times[1:]):
        n = max(1, int(np.ceil((b - a) / dt - 1e-9)))
        h = (b - a) / n
        for _ in range(n):
            z = rk4_step(g, z, h)
        out.append(z)
    return torch.stack(out)


def relative_deviation(z: np.ndarray, reference: np.ndarray) -> float:
    """max_t |z(t) - z_ref(t)| / max_t |z_ref(t)| (Euclidean norms over the latent coordinates, the worst state of
    a batch): how far a rollout strays from a reference one, relative to the reference's size."""
    z, reference = np.asarray(z), np.asarray(reference)
    gap = np.linalg.norm(z - reference, axis=-1).max(axis=0)             # (batch,) or ()
    size = np.linalg.norm(reference, axis=-1).max(axis=0)
    return float(np.max(gap / np.maximum(size, np.finfo(np.float64).tiny)))


class Surrogate:
    """A trained closure autoencoder and latent model with what is needed to use them (see the module docstring).
    Arrays in and out are numpy, float64; ``device`` is where the networks run ("cpu", "cuda"); ``precision`` the
    arithmetic they run in (:data:`PRECISIONS`)."""

    def __init__(self, autoencoder: ClosureAutoencoder, latent: LatentDynamics, manifest: dict, device: str = "cpu",
                 precision: str = "float64"):
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
        self.manifest = manifest
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.autoencoder = autoencoder.to(self.dtype).eval().to(self.device)
        self.latent = latent.to(self.dtype).eval().to(self.device)

    # -- facts ---------------------------------------------------------------------------------------------
    @property
    def n_state(self) -> int:
        """N, the length of a microscopic state."""
        return int(self.manifest["autoencoder"]["n_state"])

    @property
    def latent_dim(self) -> int:
        return int(self.manifest["latent"]["latent_dim"])

    @property
    def observable_names(self) -> list[str]:
        return list(self.manifest["observables"])

    @property
    def frame_dt(self) -> float:
        """The time between the training data's frames."""
        return float(self.manifest["frame_dt"])

    @property
    def dt(self) -> float:
        """The default RK4 step: the evaluation's, frame_dt / substeps."""
        return self.frame_dt / int(self.manifest["substeps"])

    # -- use -----------------------------------------------------------------------------------------------
    def _states(self, x, what: str = "x") -> torch.Tensor:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.n_state:
            raise InputError(f"{what}: a state of shape {x.shape} does not fit this surrogate "
                             f"({self.manifest['system']}, N = {self.n_state}); give (N,) or (batch, N)")
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = np.argwhere(bad.reshape(-1, self.n_state))[0]
            raise InputError(f"{what}: state {row} has a non-finite value at coordinate {col}")
        return torch.from_numpy(x).to(self.device, self.dtype)

    def _numpy(self, t: torch.Tensor) -> np.ndarray:
        return t.cpu().double().numpy()

    def encode(self, x) -> np.ndarray:
        """z = phi(x) = (phi*(x), phi_hat(x)) of one state (N,) or a batch (B, N)."""
        with torch.no_grad():
            return self._numpy(self.autoencoder.encode(self._states(x)))

    def decode(self, z) -> np.ndarray:
        """x_hat = psi(z) of latent states (..., d)."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape[-1] != self.latent_dim:
            raise InputError(f"z: latent states of shape {z.shape} do not fit this surrogate (d = {self.latent_dim})")
        with torch.no_grad():
            return self._numpy(self.autoencoder.decode(torch.from_numpy(z).to(self.device, self.dtype)))

    def observables(self, z) -> np.ndarray:
        """phi*: the first n_obs latent coordinates (..., n_obs), in the observables' own units (z* / s where the
        job set ``[autoencoder] observable_scale`` s)."""
        scale = np.asarray(self.manifest["autoencoder"].get("observable_scale") or 1.0)
        return np.asarray(z)[..., :len(self.observable_names)] / scale

    def velocity(self, z) -> np.ndarray:
        """The latent model's dz/dt = g(z)."""
        with torch.no_grad():
            z = torch.from_numpy(np.asarray(z, dtype=np.float64)).to(self.device, self.dtype)
            return self._numpy(self.latent(z))

    def rollout(self, x0, times, dt: float | None = None) -> np.ndarray:
        """Latent states at ``times`` (ascending, from 0 = the time of x0) of the surrogate started at
        z(0) = phi(x0): (len(times), d) for one state, (len(times), B, d) for a batch; RK4 with step ``dt``
        (default :attr:`dt`)."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if times.size < 1 or times[0] != 0.0 or np.any(np.diff(times) <= 0) or not np.all(np.isfinite(times)):
            raise InputError("times: give finite, strictly increasing times starting at 0 (the time of x0)")
        step = self.dt if dt is None else float(dt)
        if not step > 0 or not np.isfinite(step):
            raise InputError(f"dt: {dt!r} is not allowed; give a step > 0")
        x = self._states(x0, "x0")
        with torch.no_grad():
            path = rk4_path(self.latent, self.autoencoder.encode(x), times, step)
        return self._numpy(path)

    def coarsest_step(self, x0, horizon: float, rtol: float = 1e-4, max_doublings: int = 16) -> tuple[float, float]:
        """The largest RK4 step dt = 2^k · :attr:`dt` (k >= 0, dt <= horizon) whose rollout of ``x0`` over
        [0, horizon], compared at its own steps, stays within ``rtol`` of the rollout at :attr:`dt`
        (:func:`relative_deviation`); returns (dt, its deviation). The check costs one rollout at the fine step,
        so calibrate on a few states and roll the many out at the step it gives."""
        if not (np.isfinite(horizon) and horizon > 0):
            raise InputError(f"horizon: {horizon!r} is not allowed; give a time > 0")
        if not (np.isfinite(rtol) and rtol > 0):
            raise InputError(f"rtol: {rtol!r} is not allowed; give a tolerance > 0")
        fine = self.dt
        n_fine = max(1, int(np.floor(horizon / fine + 1e-9)))
        reference = self.rollout(x0, fine * np.arange(n_fine + 1), fine)
        best = (fine, 0.0)
        for k in range(1, max_doublings + 1):
            stride = 2 ** k
            if stride > n_fine:
                break
            coarse = fine * stride
            z = self.rollout(x0, coarse * np.arange(n_fine // stride + 1), coarse)
            gap = relative_deviation(z, reference[::stride])
            if gap > rtol:
                break
            best = (coarse, gap)
        return best

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the export (atomically: a temporary file renamed into place)."""
        path = Path(path)
        arrays = {f"autoencoder.{k}": v.detach().cpu().numpy() for k, v in self.autoencoder.state_dict().items()}
        arrays.update({f"latent.{k}": v.detach().cpu().numpy() for k, v in self.latent.state_dict().items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        tmp = path.with_name(path.name + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", json.dumps(self.manifest, indent=1, sort_keys=True))
            archive.writestr("arrays.npz", buffer.getvalue())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path, device: str = "cpu", precision: str = "float64") -> "Surrogate":
        """Read an export (no job spec, no store, no pickled code)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such export file")
        try:
            with zipfile.ZipFile(path) as archive:
                manifest = json.loads(archive.read("manifest.json"))
                blob = archive.read("arrays.npz")
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path}: not an hpcsur export (no readable manifest.json and arrays.npz)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{path}: not an hpcsur export (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
        version = manifest.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise InputError(f"{path}: export format version {version!r} is newer than this hpcsur reads ({VERSION}); "
                             "upgrade hpcsur")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                arrays = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except ValueError as err:
            raise InputError(f"{path}: arrays.npz is not plain arrays ({err})") from None
        shape = {**manifest["autoencoder"], "hidden": tuple(manifest["autoencoder"]["hidden"]),
                 "observable_scale": tuple(manifest["autoencoder"].get("observable_scale", ()))}
        autoencoder = ClosureAutoencoder(AutoencoderShape(**shape),
                                         observable_from_attrs(manifest["observable_attrs"]))
        latent = LatentDynamics(LatentShape(**{**manifest["latent"], "hidden": tuple(manifest["latent"]["hidden"])}))
        for prefix, module in (("autoencoder.", autoencoder), ("latent.", latent)):
            state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            try:
                module.double().load_state_dict({k: v.double() if v.is_floating_point() else v
                                                 for k, v in state.items()})
            except RuntimeError as err:
                raise InputError(f"{path}: the arrays do not fit the shapes in its manifest "
                                 f"({str(err).splitlines()[0]})") from None
        return cls(autoencoder, latent, manifest, device, precision)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Surrogate({m['system']}, N = {self.n_state}, d = {self.latent_dim}, {m['latent']['model']} trained "
                f"with {m['source']['loss']}, observables {self.observable_names})")
