"""Spectrum sets (HDF5): round trips, atomic and chunked writing, row selections, and every bad input
refused with the file, row, pixel or column named. Arrays are tiny and synthetic (no simulator)."""
from __future__ import annotations

import glob
import os

import h5py
import numpy as np
import pytest

from calipers.core.errors import FileFormatError
from calipers.core.provenance import read_provenance
from calipers.core.spectrum_sets import (Spectra, SpectrumSetError, SpectrumSetWriter, iterate_spectrum_set,
                                         read_fisher_bounds, read_spectrum_meta, read_spectrum_set,
                                         spectrum_set_info, write_fisher_bounds, write_spectrum_set)

PROV = {"stage": "Test", "config": '{"a": 1}', "calipers_version": "0"}
N_PIX = 32


def make(n: int = 10, seed: int = 0, model: bool = True, start: int = 0) -> Spectra:
    rng = np.random.default_rng(seed)
    lam = np.linspace(8400.0, 8800.0, N_PIX)
    clean = (1.0 - 0.3 * rng.uniform(size=(n, N_PIX))).astype(np.float32)
    flux = (clean + 0.05 * rng.normal(size=(n, N_PIX))).astype(np.float32)
    ivar = np.full((n, N_PIX), 400.0, np.float32)
    meta = {"teff": rng.uniform(3750, 6000, n), "logg": rng.uniform(1, 5, n), "m_h": rng.uniform(-0.25, 0.75, n),
            "snr": np.full(n, 5.0), "star_id": np.arange(start, start + n, dtype=np.int64),
            "name": np.array([f"star{i}" for i in range(start, start + n)])}
    return Spectra(lam, flux, ivar, meta, clean if model else None)


def assert_same(a: Spectra, b: Spectra) -> None:
    np.testing.assert_array_equal(a.wavelength, b.wavelength)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.ivar, b.ivar)
    assert (a.model_flux is None) == (b.model_flux is None)
    if a.model_flux is not None:
        np.testing.assert_array_equal(a.model_flux, b.model_flux)
    assert set(a.meta) == set(b.meta)
    for k in a.meta:
        assert [str(v) for v in a.meta[k]] == [str(v) for v in b.meta[k]], k


def leftovers(path) -> list[str]:
    d, base = os.path.split(str(path))
    return glob.glob(os.path.join(d, f".{base}.*.tmp"))


def test_round_trip_attributes_and_provenance(tmp_path):
    s = make()
    path = str(tmp_path / "set.hdf5")
    attrs = {"simulator": {"n_pix": N_PIX, "teff_range": [3750.0, 6000.0]}, "simulation": {"seed": 3}}
    write_spectrum_set(path, s, attrs=attrs, provenance=PROV)
    back = read_spectrum_set(path, with_model_flux=True)
    assert_same(s, back)
    assert back.flux.dtype == np.float32 and back.model_flux.dtype == np.float32
    assert read_spectrum_set(path).model_flux is None  # only on request
    info = spectrum_set_info(path)
    assert info["n"] == 10 and info["n_pix"] == N_PIX and info["has_model_flux"]
    assert info["kind"] == "calipers.spectrum_set" and "Angstrom" in info["units"]
    assert info["simulator"] == attrs["simulator"] and info["attrs"]["simulation"] == {"seed": 3}
    assert info["wavelength_range"] == (8400.0, 8800.0) and set(info["meta_columns"]) == set(s.meta)
    assert info["provenance"] == PROV and read_provenance(path) == PROV
    np.testing.assert_array_equal(back.labels(), np.stack([s.meta[c] for c in ("teff", "logg", "m_h")], 1))
    with h5py.File(path) as f:
        assert f["meta/star_id"].dtype == np.int64 and f["wavelength"].dtype == np.float64
    assert not leftovers(path)


def test_rows_columns_iteration_and_chunked_writer(tmp_path):
    path = str(tmp_path / "set.hdf5")
    parts = [make(4, seed=1, start=0), make(3, seed=2, start=4), make(5, seed=3, start=7)]
    with SpectrumSetWriter(path, parts[0].wavelength, with_model_flux=True, provenance=PROV) as w:
        for p in parts:
            w.append(p)
        assert w.n == 12
    whole = Spectra.concatenate(parts)
    assert_same(whole, read_spectrum_set(path, with_model_flux=True))
    part = read_spectrum_set(path, rows=slice(2, 9, 3), columns=["logg", "snr"])
    np.testing.assert_array_equal(part.flux, whole.flux[2:9:3])
    assert set(part.meta) == {"logg", "snr"}
    picked = read_spectrum_set(path, rows=np.array([9, 1, 5]), with_model_flux=True)  # any order, kept
    assert_same(whole.take([9, 1, 5]), picked)
    np.testing.assert_array_equal(read_spectrum_meta(path, ["star_id"], rows=np.array([11, 0]))["star_id"], [11, 0])
    starts, chunks = zip(*iterate_spectrum_set(path, 5, with_model_flux=True))
    assert starts == (0, 5, 10) and [len(c) for c in chunks] == [5, 5, 2]
    assert_same(whole, Spectra.concatenate(list(chunks)))
    with pytest.raises(SpectrumSetError, match=r"set\.hdf5.*'colour'"):
        read_spectrum_set(path, columns=["logg", "colour"])
    with pytest.raises(ValueError, match="repeated"):
        read_spectrum_set(path, rows=[1, 1])
    with pytest.raises(IndexError, match="out of range"):
        read_spectrum_set(path, rows=[12])


def test_a_failing_writer_leaves_nothing(tmp_path):
    path = tmp_path / "set.hdf5"
    s = make(4)
    with pytest.raises(RuntimeError, match="boom"):
        with SpectrumSetWriter(str(path), s.wavelength, with_model_flux=True) as w:
            w.append(s)
            raise RuntimeError("boom")
    assert not path.exists() and not leftovers(path)
    # an earlier file of that name survives a failed rewrite untouched
    write_spectrum_set(str(path), s)
    before = path.read_bytes()
    bad = make(4)
    bad.flux[2, 7] = np.nan
    with pytest.raises(SpectrumSetError):
        write_spectrum_set(str(path), bad)
    assert path.read_bytes() == before and not leftovers(path)


@pytest.mark.parametrize("what,value,words", [
    ("flux", np.nan, r"row 5, pixel 7 \(8490\.32 A\): flux is nan"),
    ("flux", np.inf, r"row 5, pixel 7 .*flux is inf"),
    ("ivar", 0.0, r"row 5, pixel 7 .*ivar is 0\.0.*finite and > 0"),
    ("ivar", -1.0, r"row 5, pixel 7 .*ivar is -1\.0"),
    ("ivar", np.nan, r"row 5, pixel 7 .*ivar is nan"),
    ("model_flux", np.nan, r"row 5, pixel 7 .*model_flux is nan"),
])
def test_bad_values_are_refused_on_write_and_on_read(tmp_path, what, value, words):
    path = str(tmp_path / "set.hdf5")
    with SpectrumSetWriter(path, make().wavelength, with_model_flux=True) as w:
        w.append(make(3))
        s = make(3, start=3)
        getattr(s, what)[2, 7] = value
        with pytest.raises(SpectrumSetError, match=r"set\.hdf5 \(chunk appended at row 3\): " + words):
            w.append(s)  # refused whole: nothing of it is written
    assert spectrum_set_info(path)["n"] == 3
    # a file damaged after writing: named on read (the row in the file, also through a row selection)
    write_spectrum_set(path, make(8))
    with h5py.File(path, "r+") as f:
        f[what][5, 7] = value
    with pytest.raises(SpectrumSetError, match=r"set\.hdf5: " + words):
        read_spectrum_set(path, with_model_flux=True)
    with pytest.raises(SpectrumSetError, match=words):
        read_spectrum_set(path, rows=np.array([6, 5]), with_model_flux=True)
    with pytest.raises(SpectrumSetError, match=words):
        list(iterate_spectrum_set(path, 3, with_model_flux=True))
    read_spectrum_set(path, rows=slice(0, 5), with_model_flux=True)  # the good rows still read


def test_structural_errors_name_the_file_and_what_is_missing(tmp_path):
    path = str(tmp_path / "set.hdf5")
    s = make(4, model=False)
    write_spectrum_set(path, s)
    with pytest.raises(SpectrumSetError, match=r"set\.hdf5: the spectrum set has no 'model_flux'"):
        read_spectrum_set(path, with_model_flux=True)
    with pytest.raises(SpectrumSetError, match="no 'model_flux'"):
        next(iterate_spectrum_set(path, 2, with_model_flux=True))
    with pytest.raises(SpectrumSetError, match=r"\['snr'\] missing"):
        Spectra(s.wavelength, s.flux, s.ivar, {"teff": s.meta["teff"]}).labels(["teff", "snr"])
    with h5py.File(path, "r+") as f:
        del f["ivar"]
    with pytest.raises(SpectrumSetError, match=r"set\.hdf5: spectrum set has no 'ivar' dataset"):
        read_spectrum_set(path)
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SpectrumSetError, match="not a spectrum set"):
        spectrum_set_info(str(other))
    with pytest.raises(FileNotFoundError, match="nothing.hdf5"):
        read_spectrum_set(str(tmp_path / "nothing.hdf5"))
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(FileFormatError, match="junk.hdf5"):
        read_spectrum_set(str(tmp_path / "junk.hdf5"))


def test_writer_refuses_inconsistent_chunks(tmp_path):
    path = str(tmp_path / "set.hdf5")
    s = make(3)
    with SpectrumSetWriter(path, s.wavelength, with_model_flux=True) as w:
        w.append(s)
        with pytest.raises(SpectrumSetError, match="has no model_flux"):
            w.append(make(2, model=False))
        with pytest.raises(SpectrumSetError, match="wavelengths differ"):
            w.append(Spectra(s.wavelength + 1.0, s.flux, s.ivar, s.meta, s.model_flux))
        short = make(2)
        del short.meta["snr"]
        with pytest.raises(SpectrumSetError, match="meta columns"):
            w.append(short)
    assert spectrum_set_info(path)["n"] == 3
    with pytest.raises(SpectrumSetError, match="strictly increasing"):
        SpectrumSetWriter(str(tmp_path / "w.hdf5"), s.wavelength[::-1])
    with pytest.raises(ValueError, match="written by the spectrum set"):
        SpectrumSetWriter(str(tmp_path / "w.hdf5"), s.wavelength, attrs={"kind": "x"})
    assert not leftovers(tmp_path / "w.hdf5")
    # an empty set (geometry fixed up front) is a valid file
    with SpectrumSetWriter(str(tmp_path / "empty.hdf5"), s.wavelength, meta_dtypes={"snr": float}):
        pass
    assert spectrum_set_info(str(tmp_path / "empty.hdf5"))["n"] == 0


def test_fisher_bounds_round_trip(tmp_path):
    path = str(tmp_path / "fisher.hdf5")
    cols = {"sigma_crlb": np.array([0.1, 0.2]), "star_id": np.array([0, 0])}
    write_fisher_bounds(path, cols, attrs={"prior": "gaussian"}, provenance=PROV)
    back, attrs = read_fisher_bounds(path)
    np.testing.assert_array_equal(back["sigma_crlb"], cols["sigma_crlb"])
    assert attrs == {"prior": "gaussian"} and read_provenance(path) == PROV
    with pytest.raises(ValueError, match="one length"):
        write_fisher_bounds(str(tmp_path / "bad.hdf5"), {"a": np.zeros(2), "b": np.zeros(3)})
    assert not (tmp_path / "bad.hdf5").exists() and not leftovers(tmp_path / "bad.hdf5")
