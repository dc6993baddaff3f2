#!/usr/bin/env python
"""Train Matrix-3D's panoramic LRM on panoramic clips with ground truth, one stage per run.

    python scripts/build_synthetic_dataset.py --out data/synth --clips 64 --frames 33 --height 128
    python scripts/train_lrm.py --data data/synth --output runs/lrm-s1 --model small --steps 20000
    python scripts/train_lrm.py --data data/synth --output runs/lrm-s2 --stage 2 --init runs/lrm-s1/model --steps 5000
    accelerate launch --num_processes 8 scripts/train_lrm.py --data data/synth --output runs/big --mixed-precision bf16

Stage 1 learns geometry and colour from ground-truth distances and frames (no rendering);
stage 2 freezes everything that feeds the predicted distances and trains the Gaussian branch
by rendering random perspective crops at context, interpolated and extrapolated poses
(matrix_world.reconstruction.lrm_objectives says why and what exactly). --data is a synthetic
dataset (scripts/build_synthetic_dataset.py: its scenes render any target pose) or any folder
of clips in the clip layout (targets: held-out frames of the clip). Latents and samples are
cached in --cache; the run folder gets metrics.jsonl, checkpoints/ and model/ (load it with
PanoLRM.from_pretrained). Rerun with --resume to continue a stopped run. Bad input prints
`error: ...` and exits with code 2.
"""

import sys
from dataclasses import dataclass, fields
from pathlib import Path

from matrix_world.errors import InputError
from matrix_world.reconstruction.lrm_train import TrainConfig

from matrix_world.app.cli import parse_options, require_positive, run_main


@dataclass(kw_only=True)
class TrainOptions(TrainConfig):
    """Options of scripts/train_lrm.py: the training config plus where the clips are."""

    data: Path
    """A synthetic dataset folder (scripts/build_synthetic_dataset.py) or any folder of clips in the clip layout."""
    eval_data: Path | None = None
    """Held-out clips (e.g. a benchmark split, whose heldout/ views are the targets); None: the last --eval-clips of --data."""
    eval_clips: int = 1
    """Clips of --data held out for evaluation when --eval-data is not given (0: no evaluation)."""
    cache: Path | None = None
    """Latent and sample cache (shared by runs with the same settings); None: <data>/.lrm_cache."""
    window_stride: int | None = None
    """Frames between the starts of a clip's training windows; None: non-overlapping windows."""
    novel_views: int = 8
    """Stage 2: target poses per window (rendered from synthetic scenes, or held-out frames of the clip)."""
    render_backend: str = "auto"
    """Rasteriser of the synthetic scenes' target renders: auto, cpu or cuda."""

    def check(self) -> None:
        super().check()
        require_positive(self, "window_stride", "novel_views")
        if self.eval_clips < 0:
            raise InputError(f"--eval-clips: expected an integer >= 0, got {self.eval_clips}")
        if self.render_backend not in ("auto", "cpu", "cuda"):
            raise InputError(f"--render-backend: expected one of auto, cpu, cuda, got {self.render_backend!r}")
        for name in ("data", "eval_data"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise InputError(f"--{name.replace('_', '-')} {path}: no such folder")


def main(argv=None) -> int:
    options = parse_options(TrainOptions, argv, prog="train_lrm.py", doc=__doc__)
    from matrix_world.datasets.lrm_samples import LRMClipSamples, SampleConfig, split_sequences
    from matrix_world.reconstruction.lrm_train import train

    config = TrainConfig(**{f.name: getattr(options, f.name) for f in fields(TrainConfig)})
    if options.eval_data is not None:
        train_seqs, eval_seqs = split_sequences(options.data, 0)[0], split_sequences(options.eval_data, 0)[0]
    else:
        train_seqs, eval_seqs = split_sequences(options.data, options.eval_clips)
    cache = options.cache or Path(options.data) / ".lrm_cache"
    samples = SampleConfig(clip_length=config.clip_length, frame_stride=config.frame_stride, height=config.height,
                           window_stride=options.window_stride, targets="none" if config.stage == 1 else "novel",
                           novel_views=options.novel_views, seed=config.seed)
    train_src = LRMClipSamples(train_seqs, encoder_spec=config.latent_encoder, cache_dir=cache, config=samples,
                               render_backend=options.render_backend)
    eval_src = None
    if eval_seqs and config.eval_every:
        held = SampleConfig(clip_length=config.clip_length, frame_stride=config.frame_stride, height=config.height,
                            targets="heldout", novel_views=config.eval_views, first_window_only=True, seed=config.seed)
        eval_src = LRMClipSamples(eval_seqs, encoder_spec=config.latent_encoder, cache_dir=cache, config=held,
                                  render_backend=options.render_backend)
    print(f"training clips: {len(train_seqs)} ({len(train_src)} windows; {len(train_src.skipped)} too short), "
          f"held-out clips: {len(eval_seqs) if eval_src is not None else 0}; cache: {cache}", flush=True)
    result = train(config, train_src, eval_src, log=lambda m: print(m, flush=True))
    print(f"step {result.step}: weights {result.model_dir} (PanoLRM.from_pretrained), checkpoints "
          f"{result.output / 'checkpoints'}, metrics {result.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
