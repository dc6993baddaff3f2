"""What a person reads after a run: the contact sheet's four labelled rows, and the summary's
Gaussian counts (the explored world's refresh is checked in test_world_pipeline.py)."""

import numpy as np
import pytest

from matrix_world.pipeline.plan import prompt_note
from matrix_world.pipeline.report import LABEL_HEIGHT, SHEET_ROWS, contact_sheet, magenta_unknown, pick

RED, GREEN, BLUE, GRAY = (200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)


def solid(colour, h: int, w: int, n: int | None = None) -> np.ndarray:
    shape = (h, w, 3) if n is None else (n, h, w, 3)
    return np.broadcast_to(np.asarray(colour, np.uint8), shape).copy()


def rows_of(sheet: np.ndarray, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(label band, tiles) of each row."""
    step = LABEL_HEIGHT + width // 2
    return [(sheet[r * step:r * step + LABEL_HEIGHT], sheet[r * step + LABEL_HEIGHT:(r + 1) * step]) for r in range(4)]


def test_contact_sheet_has_four_labelled_rows_of_the_right_sizes():
    width, columns = 96, 4
    scaffold = solid(GREEN, 16, 32, 9)
    mask = np.ones((9, 16, 32), bool)
    mask[:, :, :16] = False  # the left half of every scaffold frame is unknown
    sheet = contact_sheet([solid(RED, 32, 64)], list(magenta_unknown(scaffold[pick(9, columns)], mask[pick(9, columns)])),
                          list(solid(BLUE, 16, 32, columns)), list(solid(GRAY, 24, 24, 2 * columns)),
                          columns=columns, width=width)
    assert sheet.shape == (4 * (LABEL_HEIGHT + width // 2), columns * width, 3) and sheet.dtype == np.uint8
    assert len(SHEET_ROWS) == 4 and SHEET_ROWS[0] == "panorama" and "magenta" in SHEET_ROWS[1]
    assert "fly-through" in SHEET_ROWS[3]
    rows = rows_of(sheet, width)
    for band, _ in rows:  # a white band with dark text at its left, nothing at its right end
        assert (band > 250).all(-1).mean() > 0.6
        assert (band[:, :width] < 100).all(-1).sum() > 20
        assert (band[:, -width // 4:] > 250).all()
    assert len({band.tobytes() for band, _ in rows}) == 4  # four different labels
    # 1. panorama: one red tile, the other columns empty (white)
    tiles = rows[0][1]
    assert (tiles[:, :width] == RED).all() and (tiles[:, width:] == 255).all()
    # 2. scaffold: left half of each tile magenta (unknown), right half the known green
    tiles = rows[1][1]
    for c in range(columns):
        tile = tiles[:, c * width:(c + 1) * width]
        assert (tile[:, : width // 2 - 1] == (255, 0, 255)).all() and (tile[:, width // 2 + 1:] == GREEN).all()
    # 3. video: all blue
    assert (rows[2][1] == BLUE).all()
    # 4. fly-through: twice as many square tiles of half the width
    tiles = rows[3][1]
    assert tiles.shape == (width // 2, columns * width, 3) and (tiles == GRAY).all()


def test_contact_sheet_tiles_are_the_frames_picked():
    width = 64
    video = np.stack([solid((10 * i, 0, 0), 8, 16) for i in range(10)])  # frame i has red = 10 i
    fly = [solid((0, 0, 20 * i), 8, 8) for i in range(6)]
    sheet = contact_sheet([solid(RED, 8, 16)], [], list(video[pick(10, 3)]), fly, columns=3, width=width)
    rows = rows_of(sheet, width)
    assert [int(rows[2][1][5, c * width + 5, 0]) for c in range(3)] == [0, 40, 90]  # frames 0, 4 (4.5 -> 4), 9
    assert [int(rows[3][1][5, c * width // 2 + 5, 2]) for c in range(6)] == [0, 20, 40, 60, 80, 100]
    assert (rows[1][1] == 255).all()  # no scaffold frames given: an empty row, still labelled
    assert list(pick(10, 3)) == [0, 4, 9] and list(pick(1, 4)) == [0, 0, 0, 0]


@pytest.mark.parametrize("columns", [1, 5])
def test_contact_sheet_any_column_count(columns):
    sheet = contact_sheet([solid(RED, 8, 16)] * 7, [solid(GREEN, 8, 16)], [solid(BLUE, 8, 16)], [solid(GRAY, 8, 8)],
                          columns=columns, width=50)
    assert sheet.shape == (4 * (LABEL_HEIGHT + 25), columns * 50, 3)


def test_prompt_note_on_backends_that_read_no_text():
    preview = {"panorama": "procedural", "depth": "procedural", "video": "fill", "reconstruction": "lift"}
    assert prompt_note("a harbour", preview).startswith("note: --prompt only picks the procedural scene by its keywords")
    assert "fill video backend ignores it" in prompt_note("a harbour", preview)
    files = {**preview, "panorama": "file"}
    assert prompt_note("a harbour", files) == ("note: --prompt is unused here: the file panorama and the fill video "
                                               "backend read no text (flux and wan use it)")
    assert prompt_note("", files) is None and prompt_note("   ", preview) is None
    assert prompt_note("a harbour", {**preview, "video": "wan"}) is None
    assert prompt_note("a harbour", {**files, "panorama": "flux"}) is None


def test_summary_prints_the_peaks_the_stages_measured_in_decimal_gb(tmp_path):
    """The run's summary reports each stage's own peak (the video stage resets torch's peak counter when it
    starts, so a process-wide max_memory_allocated read at the end would cover only the stages after it)."""
    from types import SimpleNamespace

    from matrix_world.pipeline.report import summarize

    lines: list[str] = []
    result = SimpleNamespace(out=tmp_path, seconds={"panorama": 1.0, "video": 2.5}, num_gaussians=10,
                             plan=SimpleNamespace(preview_only=False), peak_gpu_gb={"video": 8.4238})
    summarize(result, wall=3.5, log=lines.append)
    assert "  peak GPU memory of the video stage: 8.4 GB" in lines
    result.peak_gpu_gb = {}
    lines.clear()
    summarize(result, wall=3.5, log=lines.append)
    assert not any("peak GPU memory" in line for line in lines)  # no stage measured one (a CPU run): no line
