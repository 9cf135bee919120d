"""The gain picture draws an interval that does not hold its point gain (a basic bootstrap interval of a
skewed metric can lie wholly above it: SmolLM2's Arabic Bhattacharyya gain 0.242 had [0.320, 0.667])."""

from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

from safespace_tasks.report.compare import PAIRED, Gain  # noqa: E402
from safespace_tasks.report.plots import plot_gains  # noqa: E402


def test_gain_bars_accept_an_interval_that_excludes_the_point(tmp_path):
    gains = {
        ("en", "bhattacharyya"): Gain("b", "a", "toxicity", "en", "bhattacharyya", 0.014, 0.12, -0.19, 0.30, PAIRED),
        ("ar", "bhattacharyya"): Gain("b", "a", "toxicity", "ar", "bhattacharyya", 0.242, 0.086, 0.320, 0.667, PAIRED),
    }
    comp = SimpleNamespace(
        metrics={"toxicity": ["bhattacharyya"]}, languages={"toxicity": ["en", "ar"]}, ci_level=0.95, z=1.96,
        gain=lambda pair, family, lang, metric: gains.get((lang, metric)),
    )
    out = plot_gains(comp, ("b", "a"), "toxicity", tmp_path / "gain.png")
    assert out is not None and out.stat().st_size > 1000
