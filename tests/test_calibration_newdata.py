"""ENCE and the error-based calibration curve (fitsnap_uq.calibration)."""

import numpy as np
import pytest

from fitsnap_uq.calibration import ence, error_based_curve


def _heteroscedastic(n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(1.0), n))  # sigma spans two decades
    return rng.standard_normal(n) * sigma, sigma


def test_calibrated_gaussian_has_ence_near_zero():
    err, sigma = _heteroscedastic()
    assert ence(err, sigma, bins=10) < 0.02
    rms_sigma, rmse = error_based_curve(err, sigma, bins=10)
    assert rms_sigma.shape == rmse.shape == (10,)
    assert np.all(np.diff(rms_sigma) > 0)  # bins in order of increasing sigma
    np.testing.assert_allclose(rmse, rms_sigma, rtol=0.03)


def test_sigma_off_by_two():
    err, sigma = _heteroscedastic(seed=1)
    assert ence(err, 2.0 * sigma) == pytest.approx(0.5, abs=0.02)  # too large: |2s - s| / 2s
    assert ence(err, 0.5 * sigma) == pytest.approx(1.0, abs=0.04)  # too small: |s/2 - s| / (s/2)


def test_constant_and_reversed_sigma():
    err, sigma = _heteroscedastic(seed=2)
    # A constant sigma, right on average, gives every bin the same rows at random: ENCE cannot see
    # that it ranks nothing (that is Spearman's job), so it is near 0.
    flat = np.full_like(sigma, np.sqrt(np.mean(sigma**2)))
    rms_sigma, _ = error_based_curve(err, flat, bins=10)
    assert np.allclose(rms_sigma, flat[0])
    assert ence(err, flat) < 0.05
    # A sigma that ranks the errors backwards (largest sigma on the smallest errors) fails badly.
    order = np.argsort(sigma)
    backwards = np.empty_like(sigma)
    backwards[order] = sigma[order[::-1]]
    assert ence(err, backwards) > 1.0
    assert ence(err, sigma) < 0.05


def test_equal_count_bins_and_known_values():
    sigma = np.array([1.0, 1.0, 2.0, 2.0])
    err = np.array([1.0, -1.0, 4.0, 0.0])
    rms_sigma, rmse = error_based_curve(err, sigma, bins=2)
    np.testing.assert_allclose(rms_sigma, [1.0, 2.0])
    np.testing.assert_allclose(rmse, [1.0, np.sqrt(8.0)])
    assert ence(err, sigma, bins=2) == pytest.approx(0.5 * (np.sqrt(8.0) - 2.0) / 2.0)
    # more bins than rows: one row per bin
    assert error_based_curve(err, sigma, bins=10)[0].shape == (4,)


def test_bad_input():
    with pytest.raises(ValueError):
        ence(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError):
        error_based_curve(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError):
        ence(np.zeros(3), np.ones(3), bins=0)


def test_nn_benchmark_splits_each_group_into_training_and_held_out_folders(tmp_path):
    """benchmarks/calibration_nn_newdata.py trains FitSNAP on exactly the complement of the held-out
    configurations: each group's files go to GROUP or GROUP__heldout, with fractions 1/0 and 0/1."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from calibration_nn_newdata import HELD, split_input

    data = tmp_path / "data"
    for g in ("Displaced_BCC", "Liquid"):
        (data / g).mkdir(parents=True)
        for k in range(5):
            (data / g / f"{g}_{k}.json").write_text("{}")
    held = {"Displaced_BCC/Displaced_BCC_1.json", "Liquid/Liquid_3.json", "Liquid/Liquid_4.json"}
    text = split_input(tmp_path / "fit", data, held, epochs=7, members=3).read_text()
    for g in ("Displaced_BCC", "Liquid"):
        kept = sorted(p.name for p in (tmp_path / "fit" / "JSON" / g).iterdir())
        out = sorted(p.name for p in (tmp_path / "fit" / "JSON" / (g + HELD)).iterdir())
        assert {f"{g}/{n}" for n in out} == {k for k in held if k.startswith(g)}
        assert len(kept) + len(out) == 5 and not set(kept) & set(out)
        assert f"\n{g} = 1.0 0.0 " in text and f"\n{g + HELD} = 0.0 1.0 " in text
    assert "num_epochs = 7" in text and "nn_members = 3" in text and "dataPath = JSON" in text
