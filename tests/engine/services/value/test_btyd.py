"""BG/NBD on the CDNOW sample reproduces the published fit (Fader, Hardie & Lee 2005),
and its holdout-period prediction tracks the actual repeat purchases."""

from __future__ import annotations

import pytest

from stagecoach.engine.services.value import cdnow


def test_bgnbd_on_cdnow_matches_the_published_parameters_and_the_holdout() -> None:
    result = cdnow.validate()
    fitted = result.fitted.params()
    assert result.customers == 2357
    for name, published in cdnow.PUBLISHED.items():
        assert fitted[name] == pytest.approx(published, rel=0.005), name
    # Weeks 40-78: 1,882 repeat transactions happened; the model expects within 15%.
    assert result.actual_holdout == 1882
    assert result.predicted_holdout == pytest.approx(result.actual_holdout, rel=0.15)
    # Conditional expectations rise with calibration-period purchases, as the actuals do.
    predicted = [g[3] for g in result.by_frequency]
    assert predicted == sorted(predicted)
    for label, _, actual, expected in result.by_frequency:
        assert expected == pytest.approx(actual, abs=0.4), label
    # Gamma-Gamma fitted on the same repeat buyers' spend.
    assert result.fitted.p is not None
    assert result.fitted.spend_error is None
