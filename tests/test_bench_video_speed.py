"""benchmarks/video_speed.py's bookkeeping: which steps a cache / CFG-truncation row computes, the
50-step extrapolation from measured step kinds, and the row order rule (irreversible options last)."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import video_speed as vs  # noqa: E402


def test_taylorseer_steps_follow_diffusers_rule():
    # diffusers' TaylorSeer: full steps 0, 1, 2 (warm-up), then the step with (i - 4) % interval == 0
    kinds = vs.step_kinds(vs.ROWS["sage_compiled_taylorseer"], 12)
    assert [c for _, c in kinds] == [True, True, True, False, True, False, False, False, True, False, False, False]
    assert all(g for g, _ in kinds)  # guided throughout
    two = vs.step_kinds(vs.ROWS["sage_compiled_ts2"], 50)
    assert sum(c for _, c in two) == 3 + len(range(4, 50, 2))  # 26 computed, 24 predicted
    cfg = vs.step_kinds(vs.ROWS["sage_compiled_cfgstop"], 8)
    assert [g for g, _ in cfg] == [True] * 4 + [False] * 4 and all(c for _, c in cfg)


def test_extrapolation_weights_each_kind_of_step_by_its_count():
    row = vs.ROWS["sage_compiled_ts2_cfgstop"]  # interval 2 and CFG in the first half
    n = 8
    cost = {(True, True): 6.0, (True, False): 0.2, (False, True): 3.0, (False, False): 0.1}
    steps = [60.0] + [cost[k] for k in vs.step_kinds(row, n)[1:]]  # the first step holds the compile: left out
    fifty = vs.step_kinds(row, 50)
    expected = sum(cost[k] for k in fifty) / 50
    assert vs.extrapolate(row, steps) == pytest.approx(expected)
    assert vs.extrapolate(row, steps[:4]) is None  # no unguided step measured: no number
    assert vs.extrapolate(vs.ROWS["fbc"], [1.0] * 8) is None  # FirstBlockCache's skips depend on the weights
    plain = vs.ROWS["sage_compiled"]
    assert vs.extrapolate(plain, [20.0, 6.0, 6.2]) == pytest.approx(6.1)
    assert math.isclose(vs.extrapolate(vs.ROWS["sage_compiled_cfgstop"], [9, 6, 6, 6, 3, 3, 3, 3]), 4.5)


def test_remaining_steps_of_a_cut_run_at_their_kinds_time():
    """The e2e skip variant: a world cut to 8 video steps, the other 42 of 50 added at their kind's time."""
    row = vs.ROWS["sage_compiled_ts2"]
    steps = [20.0, 6.0, 6.0, 0.1, 6.0, 0.1, 6.0, 0.1]  # computed 0-2, 4, 6; predicted 3, 5, 7
    rest = vs.step_kinds(row, 50)[8:]
    expected = sum(6.0 if computed else 0.1 for _, computed in rest)
    assert vs.remaining_s(row, steps) == pytest.approx(expected)
    assert sum(c for _, c in rest) == 21  # steps 8, 10, ..., 48
    assert vs.remaining_s(row, steps[:3]) is None  # no predicted step measured
    # the measured steps (step 0 at its kind's time, not its compile) + the rest = the 50-step extrapolation
    assert 6.0 + sum(steps[1:]) + vs.remaining_s(row, steps) == pytest.approx(50 * vs.extrapolate(row, steps))


def test_row_order():
    vs.check_order(["stock", "sage", "sage_compiled", "sage_compiled_ts2", "sage_fp8", "sage_fp8_ts2", "turbo"])
    with pytest.raises(ValueError, match="put it earlier"):
        vs.check_order(["sage_fp8", "sage_compiled"])
    with pytest.raises(ValueError, match="unknown row"):
        vs.check_order(["stock", "nope"])


def test_e2e_call_timer_times_each_component_call_and_unwraps():
    """benchmarks/e2e.py CallTimer: seconds per wrapped component method, summed over calls; summary()
    restores the class's methods (the wrappers hold the components, so the benchmark unwraps at free)."""
    import time
    from types import SimpleNamespace

    import torch

    import e2e

    class Vae:
        def decode(self, x):
            time.sleep(0.02)
            return x + 1

    vae, enc = Vae(), torch.nn.Linear(2, 2)
    timer = e2e.CallTimer(SimpleNamespace(vae=vae, text_encoder=enc), torch.device("cpu"))
    assert vae.decode(1) == 2 and vae.decode(2) == 3
    enc(torch.zeros(1, 2))
    seconds = timer.summary()
    assert set(seconds) == {"vae.decode", "text_encoder"} and seconds["vae.decode"] >= 0.04
    assert "decode" not in vars(vae) and "forward" not in vars(enc)  # the class's methods again


# --------------------------------------------------------------------------- benchmarks/video_error.py


def test_step_errors_are_relative_to_the_update_and_to_the_state():
    import torch
    import video_error as ve

    ref = [torch.zeros(4), torch.full((4,), 2.0), torch.full((4,), 3.0)]  # updates of norm 4 and 2
    got = [torch.full((4,), 2.5), torch.full((4,), 3.0)]  # step 0 off by 0.5 per element (norm 1)
    e = ve.step_errors(got, ref)
    assert e["update"] == pytest.approx([0.25, 0.0]) and e["latent"] == pytest.approx([0.25, 0.0])
    with pytest.raises(ValueError, match="reference latents"):
        ve.step_errors(got, ref[:2])


def test_video_error_smoke_puts_each_approximation_where_it_acts(tmp_path, monkeypatch):
    """Teacher-forced on the tiny model: exact options repeat exactly; TaylorSeer 2 errs only at its predicted
    steps (3, 5 of 6); CFG truncation only in the unguided second half."""
    import json

    import video_error as ve

    monkeypatch.setenv("OUT", str(tmp_path))
    assert ve.main(["--smoke", "--variants", "repeat", "ts2", "cfgstop", "sage"]) == 0
    rows = {r["variant"]: r for r in json.loads((tmp_path / "video_error.json").read_text())["rows"]}
    assert rows["repeat"]["update"] == [0.0] * 6
    ts2 = rows["ts2"]["update"]
    assert [k for k, e in enumerate(ts2) if e > 1e-6] == [3, 5]
    cfg = rows["cfgstop"]["update"]
    assert cfg[:3] == [0.0] * 3 and min(cfg[3:]) > 1e-3
    assert rows["sage"]["skipped"] == "needs a CUDA device"
