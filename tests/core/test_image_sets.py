"""Image sets (HDF5) and FITS cutout directories: round trips, atomic writes, chunked writing and
reading, and every bad input refused with the file, band, column and row named."""
from __future__ import annotations

import glob
import os

import h5py
import numpy as np
import pytest
from astropy.io import fits

from calipers.core.errors import FileFormatError
from calipers.core.image_sets import (CutoutError, ImageSetWriter, check_finite_cutouts, image_set_info,
                                      iterate_image_set, read_fits_cutouts, read_image_set, write_fits_cutouts,
                                      write_image_set)
from calipers.core.provenance import read_provenance
from calipers.lens.simulate import CLASS_NAMES, CutoutSet, LensSimConfig, simulate_cutouts

PROV = {"stage": "Test", "config": '{"a": 1}', "calipers_version": "0"}


@pytest.fixture(scope="module")
def cutouts():
    """8 simulated cutouts with one string column added."""
    c = simulate_cutouts(8, LensSimConfig(block_size=8), seed=3)
    c.meta["name"] = np.array([f"obj{i}" for i in range(8)])
    return c


def assert_same(a: CutoutSet, b: CutoutSet, dtypes: bool = True):
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.ivar, b.ivar)
    assert a.data.dtype == b.data.dtype == np.float32 and b.ivar.dtype == np.float32
    assert set(a.meta) == set(b.meta)
    for k in a.meta:
        if a.meta[k].dtype.kind in "USO":
            assert [str(v) for v in a.meta[k]] == [str(v) for v in b.meta[k]], k
        else:
            np.testing.assert_array_equal(a.meta[k], b.meta[k], err_msg=k)
            if dtypes:
                assert a.meta[k].dtype == b.meta[k].dtype, k
    assert a.bands == b.bands and a.pixel_scale == b.pixel_scale and a.zero_points == b.zero_points


def leftovers(path: str) -> list[str]:
    d, base = os.path.split(path)
    return glob.glob(os.path.join(d, f".{base}.*.tmp"))


# ============================================================================ image sets
def test_round_trip_is_bitwise_and_attributes_are_recorded(tmp_path, cutouts):
    path = str(tmp_path / "set.hdf5")
    write_image_set(path, cutouts, provenance=PROV)
    back = read_image_set(path)
    assert_same(cutouts, back)
    info = image_set_info(path)
    assert info["n"] == 8 and info["shape"] == (8, 3, 64, 64) and info["bands"] == ["g", "r", "i"]
    assert set(info["meta_columns"]) == set(cutouts.meta)
    assert info["class_names"] == list(CLASS_NAMES) and info["kind"] == "calipers.image_set"
    assert info["provenance"] == PROV and info["pixel_scale"] == 0.263 and "electron/s" in info["units"]
    assert read_provenance(path) == PROV  # also the provenance group every calipers output carries
    with h5py.File(path) as f:
        assert f["data"].dtype == np.float32 and f["meta/label"].dtype == np.int8
    assert not leftovers(path)


def test_rows_columns_and_iteration(tmp_path, cutouts):
    path = str(tmp_path / "set.hdf5")
    write_image_set(path, cutouts)
    part = read_image_set(path, rows=slice(2, 5), columns=["label", "theta_e"])
    np.testing.assert_array_equal(part.data, cutouts.data[2:5])
    assert set(part.meta) == {"label", "theta_e"}
    np.testing.assert_array_equal(read_image_set(path, rows=slice(1, 8, 3)).ivar, cutouts.ivar[1:8:3])
    starts, chunks = zip(*iterate_image_set(path, 3))
    assert starts == (0, 3, 6) and [len(c) for c in chunks] == [3, 3, 2]
    assert_same(CutoutSet.concatenate(list(chunks)), cutouts)
    with pytest.raises(CutoutError, match=r"set\.hdf5.*'colour'"):
        read_image_set(path, columns=["label", "colour"])
    with pytest.raises(ValueError, match="chunk_size"):
        next(iterate_image_set(path, 0))


def test_chunked_writer_equals_one_write_and_renames_only_at_close(tmp_path):
    cfg = LensSimConfig(block_size=4)
    whole = simulate_cutouts(10, cfg, seed=9)
    path = str(tmp_path / "grown.hdf5")
    with ImageSetWriter(path, provenance=PROV) as w:
        for s in (0, 4, 8):
            w.append(simulate_cutouts(min(4, 10 - s), cfg, seed=9, start=s))
            assert not os.path.exists(path) and len(leftovers(path)) == 1
        assert w.n == 10
    assert_same(whole, read_image_set(path))
    assert image_set_info(path)["provenance"] == PROV and not leftovers(path)
    # a fixed geometry allows an empty set; without one, closing an empty writer is an error
    empty = str(tmp_path / "empty.hdf5")
    ImageSetWriter.create(empty, 64, meta_dtypes={"label": np.int8}).close()
    assert image_set_info(empty)["shape"] == (0, 3, 64, 64) and len(read_image_set(empty)) == 0
    nothing = str(tmp_path / "nothing.hdf5")
    with pytest.raises(ValueError, match="no images"):
        ImageSetWriter(nothing).close()
    assert not os.path.exists(nothing) and not leftovers(nothing)


def test_writer_refuses_chunks_that_do_not_match(tmp_path, cutouts):
    path = str(tmp_path / "w.hdf5")
    w = ImageSetWriter(path)
    w.append(cutouts.take(slice(0, 2)))
    two_bands = CutoutSet(cutouts.data[:2, :2], cutouts.ivar[:2, :2], {k: v[:2] for k, v in cutouts.meta.items()},
                          ("g", "r"), 0.263, cutouts.zero_points)
    with pytest.raises(CutoutError, match=r"w\.hdf5: chunk at row 2 has bands \('g', 'r'\)"):
        w.append(two_bands)
    fewer = cutouts.take(slice(2, 4))
    fewer.meta.pop("theta_e")
    with pytest.raises(CutoutError, match="row 2 has meta columns"):
        w.append(fewer)
    w.abort()
    assert not os.path.exists(path) and not leftovers(path)


def test_write_is_atomic(tmp_path, cutouts, monkeypatch):
    """A write that fails after the pixels are written leaves no file and no temporary, and an
    earlier file of the same name untouched."""
    import calipers.core.image_sets as mod

    path = str(tmp_path / "set.hdf5")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "write_provenance_hdf5", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image_set(path, cutouts, provenance=PROV)
    assert not os.path.exists(path) and not leftovers(path)
    monkeypatch.undo()
    write_image_set(path, cutouts.take(slice(0, 3)))
    before = open(path, "rb").read()
    monkeypatch.setattr(mod, "write_provenance_hdf5", crash)
    with pytest.raises(RuntimeError):
        write_image_set(path, cutouts)
    assert open(path, "rb").read() == before and not leftovers(path)
    # an exception inside a writer's with-block discards what was appended
    with pytest.raises(KeyError):
        with ImageSetWriter(str(tmp_path / "ctx.hdf5")) as w:
            w.append(cutouts)
            raise KeyError("stop")
    assert not os.path.exists(tmp_path / "ctx.hdf5") and not leftovers(str(tmp_path / "ctx.hdf5"))


def test_non_finite_pixels_are_refused_with_file_row_band_and_pixel(tmp_path, cutouts):
    path = str(tmp_path / "bad.hdf5")
    write_image_set(path, cutouts)
    with h5py.File(path, "r+") as f:
        f["data"][5, 1, 3, 4] = np.nan
    msg = r"bad\.hdf5: image row 5, band 'r': data holds nan at pixel \(y=3, x=4\)"
    with pytest.raises(CutoutError, match=msg):
        read_image_set(path)
    with pytest.raises(CutoutError, match=msg):
        read_image_set(path, rows=slice(4, 8))
    with pytest.raises(CutoutError, match=msg):
        read_image_set(path, rows=slice(1, 8, 2))
    with pytest.raises(CutoutError, match=msg):
        list(iterate_image_set(path, 3))
    assert len(read_image_set(path, rows=slice(0, 5))) == 5  # rows before it are fine
    with h5py.File(path, "r+") as f:
        f["data"][5, 1, 3, 4] = 0.0
        f["ivar"][7, 2, 0, 1] = np.inf
    with pytest.raises(CutoutError, match=r"image row 7, band 'i': ivar holds inf at pixel \(y=0, x=1\)"):
        read_image_set(path)
    with h5py.File(path, "r+") as f:
        f["ivar"][7, 2, 0, 1] = -1.0
    with pytest.raises(CutoutError, match=r"image row 7, band 'i': ivar is negative"):
        read_image_set(path)
    bad = cutouts.take(slice(0, 3))
    bad.data = bad.data.copy()
    bad.data[2, 0, 10, 11] = np.inf
    with pytest.raises(CutoutError, match=r"row 2, band 'g': data holds inf at pixel \(y=10, x=11\)"):
        write_image_set(str(tmp_path / "never.hdf5"), bad)
    assert not os.path.exists(tmp_path / "never.hdf5")
    with pytest.raises(CutoutError, match=r"src: image row 12, band 'g'"):
        check_finite_cutouts(bad.data, bad.ivar, "src", row_offset=10, bands=("g", "r", "i"))


def test_not_an_image_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        read_image_set(str(tmp_path / "nope.hdf5"))
    other = str(tmp_path / "catalog.hdf5")
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FileFormatError, match=r"catalog\.hdf5: not an image set"):
        image_set_info(other)
    text = tmp_path / "text.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(FileFormatError, match="text.hdf5"):
        read_image_set(str(text))


# ============================================================================ FITS cutouts
def test_fits_round_trip(tmp_path, cutouts):
    index = write_fits_cutouts(str(tmp_path / "fits"), cutouts)
    assert os.path.basename(index) == "index.csv"
    header = open(index).readline().strip().split(",")
    assert header[:3] == ["file", "object_id", "label"] and set(header[1:]) == set(cutouts.meta)
    back = read_fits_cutouts(index)
    assert_same(cutouts, back, dtypes=False)
    with fits.open(tmp_path / "fits" / "cutout_3.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "G", "R", "I", "IVAR_G", "IVAR_R", "IVAR_I"]
        assert hdul[0].data is None
        h = hdul["R"].header
        assert h["BAND"] == "r" and h["PIXSCALE"] == 0.263 and h["ZP"] == cutouts.zero_points["r"]
    # an HDF5 index (a table of columns) with files in another directory
    h5 = str(tmp_path / "index.h5")
    with h5py.File(h5, "w") as f:
        f["file"] = np.array([f"cutout_{i}.fits" for i in range(8)], dtype=h5py.string_dtype())
        f["label"] = cutouts.meta["label"]
    back = read_fits_cutouts(h5, base_dir=str(tmp_path / "fits"), n_pix=64)
    np.testing.assert_array_equal(back.data, cutouts.data)
    np.testing.assert_array_equal(back.meta["label"], cutouts.meta["label"])


def _write_fits(path, images: dict, ivars: dict | None = None, pixscale=0.263, zp=30.0):
    hdus = [fits.PrimaryHDU()]
    for prefix, arrays in (("", images), ("IVAR_", ivars or {})):
        for band, arr in arrays.items():
            h = fits.ImageHDU(np.asarray(arr, dtype=np.float32), name=prefix + band.upper())
            if pixscale is not None:
                h.header["PIXSCALE"] = pixscale
            if zp is not None:
                h.header["ZP"] = zp
            hdus.append(h)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _index(tmp_path, files, name="index.csv", column="file"):
    path = tmp_path / name
    path.write_text(f"{column},label\n" + "".join(f"{f},{i % 2}\n" for i, f in enumerate(files)))
    return str(path)


def _good(n=8):
    rng = np.random.default_rng(0)
    return {b: rng.normal(0, 1, (n, n)) for b in "gri"}, {b: np.ones((n, n)) for b in "gri"}


def test_fits_errors_name_file_band_column_and_row(tmp_path):
    img, inv = _good()
    for i in range(3):
        _write_fits(tmp_path / f"c{i}.fits", img, inv)
    assert read_fits_cutouts(_index(tmp_path, ["c0.fits", "c1.fits", "c2.fits"])).data.shape == (3, 3, 8, 8)

    with pytest.raises(CutoutError, match=r"index\.csv: the cutout index has no column 'file'"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits"], column="path"))
    with pytest.raises(CutoutError, match=r"missing\.fits \(index .*index\.csv, row 1\): file does not exist"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits", "missing.fits"]))

    _write_fits(tmp_path / "no_r.fits", {"g": img["g"], "i": img["i"]}, inv)
    with pytest.raises(CutoutError, match=r"no_r\.fits \(index .*row 2\): no HDU with EXTNAME 'R' for band 'r'"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits", "c1.fits", "no_r.fits"]))

    small = {b: np.zeros((6, 6)) for b in "gri"}
    _write_fits(tmp_path / "small.fits", small, {b: np.ones((6, 6)) for b in "gri"})
    with pytest.raises(CutoutError, match=r"small\.fits \(index .*row 0\): band 'g' image is 6x6 pixels; expected 8x8 "
                                          r"\(n_pix = 8\)"):
        read_fits_cutouts(_index(tmp_path, ["small.fits"]), n_pix=8)
    with pytest.raises(CutoutError, match=r"small\.fits \(index .*row 1\): band 'g' image is 6x6 .*the first cutout, "
                                          r".*c0\.fits"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits", "small.fits"]))
    _write_fits(tmp_path / "mixed.fits", {"g": img["g"], "r": small["r"], "i": img["i"]}, inv)
    with pytest.raises(CutoutError, match=r"mixed\.fits .*band 'r' image is 6x6 pixels but band 'g' is 8x8 "
                                          r"\(bands of different shapes\)"):
        read_fits_cutouts(_index(tmp_path, ["mixed.fits"]))

    nan = {b: v.copy() for b, v in img.items()}
    nan["i"][3, 5] = np.nan
    _write_fits(tmp_path / "nan.fits", nan, inv)
    with pytest.raises(CutoutError, match=r"nan\.fits \(index .*row 1\): band 'i' \(HDU 'I'\) holds nan at pixel "
                                          r"\(y=3, x=5\)"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits", "nan.fits"]))

    _write_fits(tmp_path / "no_ivar.fits", img, {"g": inv["g"], "r": inv["r"]})
    with pytest.raises(CutoutError, match=r"no_ivar\.fits .*no HDU 'IVAR_I' .*band 'i'.*ivar='estimate'"):
        read_fits_cutouts(_index(tmp_path, ["no_ivar.fits"]))
    assert read_fits_cutouts(_index(tmp_path, ["no_ivar.fits"]), ivar="estimate").ivar.shape == (1, 3, 8, 8)

    neg = {b: v.copy() for b, v in inv.items()}
    neg["g"][0, 2] = -1
    _write_fits(tmp_path / "neg.fits", img, neg)
    with pytest.raises(CutoutError, match=r"neg\.fits .*HDU 'IVAR_G' \(band 'g'\) holds -1.0 at pixel \(y=0, x=2\)"):
        read_fits_cutouts(_index(tmp_path, ["neg.fits"]))

    _write_fits(tmp_path / "noscale.fits", img, inv, pixscale=None)
    with pytest.raises(CutoutError, match="PIXSCALE.*pass pixel_scale"):
        read_fits_cutouts(_index(tmp_path, ["noscale.fits"]))
    assert read_fits_cutouts(_index(tmp_path, ["noscale.fits"]), pixel_scale=0.2).pixel_scale == 0.2
    _write_fits(tmp_path / "zp.fits", img, inv, zp=31.0)
    with pytest.raises(CutoutError, match=r"zp\.fits .*row 1\): band 'g' has zero point ZP = 31.0"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits", "zp.fits"]))

    (tmp_path / "junk.fits").write_text("not fits")
    with pytest.raises(CutoutError, match=r"junk\.fits .*cannot be read as FITS"):
        read_fits_cutouts(_index(tmp_path, ["junk.fits"]))
    with pytest.raises(ValueError, match="ivar"):
        read_fits_cutouts(_index(tmp_path, ["c0.fits"]), ivar="guess")


def test_estimated_ivar_is_the_sky_noise(tmp_path):
    """ivar='estimate': 1 / sigma^2 from the sigma-clipped MAD of the pixels recovers the noise
    of a pure-noise image, and ignores a bright source in it."""
    rng = np.random.default_rng(1)
    n, sigma = 64, 2.0
    img = {b: rng.normal(0, sigma, (n, n)) for b in "gri"}
    y, x = np.mgrid[:n, :n]
    img["r"] = img["r"] + 500 * np.exp(-((x - 32) ** 2 + (y - 32) ** 2) / (2 * 2.0 ** 2))
    _write_fits(tmp_path / "c.fits", img)
    c = read_fits_cutouts(_index(tmp_path, ["c.fits"]), ivar="estimate")
    for j in range(3):
        assert np.unique(c.ivar[0, j]).size == 1
        # the MAD of 4096 Gaussian draws scatters by about 2.5 % in sigma, 5 % in ivar
        assert c.ivar[0, j, 0, 0] == pytest.approx(1 / sigma ** 2, rel=0.12)
