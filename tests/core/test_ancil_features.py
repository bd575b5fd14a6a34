"""Calibration features from the distributions' own ancil, and their logs."""
import numpy as np
import pytest

from calipers.core.features import with_ancil_features


def test_ancil_columns_are_appended_and_logs_taken_by_name():
    x = np.array([[5.0], [20.0]])
    spec = {"feature_columns": ["snr"], "ancil_columns": ["logg_std", "logg_mean"], "log_columns": ["snr", "logg_std"]}
    out = with_ancil_features(x, {"logg_std": np.array([0.5, 0.1]), "logg_mean": np.array([2.0, 4.0])}, spec, "f.hdf5")
    np.testing.assert_allclose(out, [[np.log(5.0), np.log(0.5), 2.0], [np.log(20.0), np.log(0.1), 4.0]])
    # a calibrator saved before these keys existed: the catalog features unchanged
    assert with_ancil_features(x, None, {"feature_columns": ["snr"]}, "f.hdf5") is x


def test_bad_ancil_features_name_the_file_column_and_row():
    x = np.ones((3, 1))
    spec = {"feature_columns": ["snr"], "ancil_columns": ["logg_std"], "log_columns": ["logg_std"]}
    with pytest.raises(ValueError, match="f.hdf5: ancil column 'logg_std'.*missing"):
        with_ancil_features(x, {"other": np.ones(3)}, spec, "f.hdf5")
    with pytest.raises(ValueError, match="'logg_std' must be > 0 .* at row 12"):
        with_ancil_features(x, {"logg_std": np.array([0.1, 0.2, 0.0])}, spec, "f.hdf5", start=10)
    with pytest.raises(ValueError, match="not finite in 1 row.*row 1"):
        with_ancil_features(x, {"logg_std": np.array([0.1, np.inf, 0.3])}, spec | {"log_columns": []}, "f.hdf5")
