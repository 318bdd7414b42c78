"""rl/report.py: the multi-seed summary of `r1kit zero --seeds N`."""
import json

from r1kit.rl.report import headline, write_seeds


def _summary(refl_base, refl_after, jump):
    side = lambda p, length, r: {"pass@1": p, "length": length, "reflection_rate": r}  # noqa: E731
    return {"before": side(0.25, 8.8, refl_base), "after": side(0.9, 35.0, refl_after), "seconds": 100.0,
            "length_growth": {"largest_jump_share": jump}}


def test_a_ratio_over_a_zero_base_has_no_value_and_seeds_without_one_are_left_out(tmp_path):
    """A base with no reflective word made the ratio after / 1e-9 (a billion), and a run whose length never rose had
    a NaN jump share, on which statistics.stdev raised: the 3-seed summary crashed after every run had finished."""
    runs = [_summary(0.0, 0.988, 0.2), _summary(0.01, 0.8, None), _summary(0.02, 0.0, 0.3)]
    assert headline(runs[0])["reflection ratio"] is None
    write_seeds(tmp_path, runs)
    figs = json.loads((tmp_path / "summary.json").read_text())["figures"]
    ratio = figs["reflection ratio"]
    assert ratio["values"] == [None, 80.0, 0.0] and ratio["n"] == 2 and ratio["mean"] == 40.0
    assert figs["largest length jump share"]["n"] == 2 and abs(figs["largest length jump share"]["mean"] - 0.25) < 1e-12
    assert figs["pass@1 after"]["n"] == 3 and abs(figs["pass@1 after"]["std"]) < 1e-12
    md = (tmp_path / "summary.md").read_text()
    assert "| reflection ratio | 40.000 ± 56.569 (over 2) | -, 80.000, 0.000 |" in md
