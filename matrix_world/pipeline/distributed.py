"""One world run on several GPUs of one machine (``--gpus N``, or started by ``torchrun``).

Rank 0 runs every stage and is the only process that touches the run directory (lock,
manifest, artifacts), exactly as a one-GPU run. At the video stage (Wan backend) all ranks
join: rank 0 broadcasts what the stage needs (the video config, prompt, the noise generator's
state, the scaffold rgb / mask and the poses), every rank builds the same pipeline with
context parallelism (generation.video_parallel) and runs the same call; rank 0 writes the
result. The other ranks wait for rank 0's messages and exit with rank 0's exit status; they
never open the run directory. A failure on rank 0 outside a video job (e.g. a refused
``--out`` before the video stage) is broadcast as a stop, so no rank is left waiting; a
failure inside a job (the ranks are inside the same collective) ends that process at once
and the launcher stops the others.

* :func:`launch` starts N processes through torch.distributed's elastic launcher (what
  ``torchrun`` runs) and returns rank 0's exit status;
* :func:`run_team` is what every process runs: rank 0 the world body, the others :meth:`Team.serve`;
* :func:`check_gpus` validates ``--gpus`` against the machine. On CPU machines the gloo backend
  is used only when ``MATRIX_WORLD_TEST_GLOO=1`` (the test path); otherwise ``--gpus N`` needs
  N visible CUDA GPUs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from matrix_world.errors import InputError, one_line, short_error
from matrix_world.generation.video import VideoConfig, VideoResult, generate_video

GLOO_ENV = "MATRIX_WORLD_TEST_GLOO"  # "1": --gpus N runs N CPU processes on gloo (tests; diffusers CP on CPU)
EXIT_BUG = 1


@dataclass(frozen=True)
class DistributedConfig:
    """How the processes of one run talk to each other."""

    backend: str = "nccl"  # nccl (GPUs) | gloo (CPU, tests)
    cfg_parallel: bool = False  # the CFG passes on two halves of the ranks (generation.video_parallel)
    cp_mode: str = "auto"  # generation.video_parallel.context_parallel_config's mode
    timeout_s: float = 3600.0  # how long a rank waits in one collective (followers wait through the stages before the video)


def torchrun_world_size() -> int:
    """WORLD_SIZE of a torchrun launch (1 when not started by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE must be an integer (set by torchrun), got {os.environ['WORLD_SIZE']!r}") from None


def distributed_backend() -> str:
    return "gloo" if os.environ.get(GLOO_ENV, "") == "1" else "nccl"


def check_gpus(gpus: int, device: str, backend: str) -> None:
    """--gpus N: at least 1; N > 1 needs N visible CUDA GPUs (nccl) and --device auto or cuda, or the
    test path's gloo with --device cpu or auto."""
    if gpus < 1:
        raise InputError(f"--gpus must be at least 1, got {gpus}")
    if gpus == 1:
        return
    if backend == "gloo":
        if device not in ("auto", "cpu"):
            raise InputError(f"--gpus {gpus} with {GLOO_ENV}=1 runs CPU processes; expected --device cpu or auto, got {device}")
        return
    if device not in ("auto", "cuda"):
        raise InputError(f"--gpus {gpus} uses cuda:0..cuda:{gpus - 1}, one per process; expected --device auto or cuda, "
                         f"got {device}")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < gpus:
        raise InputError(f"--gpus {gpus} needs {gpus} CUDA GPUs, this machine has {visible} visible; expected --gpus "
                         f"{max(visible, 1)} or a machine with {gpus} GPUs")


def launch(gpus: int, entry: Callable[..., int], args: tuple) -> int:
    """Run ``entry(*args)`` in ``gpus`` processes (torch.distributed's elastic launcher, as torchrun
    --standalone; RANK / WORLD_SIZE / MASTER_ADDR set for each) and return rank 0's exit status.

    When a process fails (a rank ends with an error inside a video job), the launcher stops the others;
    the status is then rank 0's exit code if rank 0 failed, else the failed rank's."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=gpus, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1, start_method="spawn")
    quiet = logging.getLogger("torch.distributed.elastic")
    level, quiet.level = quiet.level, logging.CRITICAL  # the ranks print their own one-line errors
    try:
        codes = elastic_launch(config, entry)(*args)
    except ChildFailedError as failed:
        rank = 0 if 0 in failed.failures else min(failed.failures)
        return int(failed.failures[rank].exitcode) or EXIT_BUG
    finally:
        quiet.setLevel(level)
    return int(codes[0] or 0)


@dataclass
class VideoJob:
    """What rank 0 broadcasts to start one video call (the arrays follow as tensors)."""

    config: VideoConfig
    prompt: str
    generator_state: torch.Tensor  # torch.Generator().get_state() of rank 0's noise generator
    shapes: dict[str, tuple[int, ...]]


class Team:
    """The processes of one run as seen by one of them (state: the rank, the device, the pipeline loader).

    Rank 0 calls :meth:`generate_video` in place of generation.video.generate_video; the other ranks
    call :meth:`serve` until rank 0's stop."""

    def __init__(self, config: DistributedConfig, *, load=None, log: Callable[[str], None] = print):
        import torch.distributed as dist
        from matrix_world.generation.video_parallel import init_distributed

        self.config = config
        self.device = init_distributed(config.backend, timeout_s=config.timeout_s)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.load = load  # None: load_video_pipeline; benchmarks: their random-weight builder
        self.log = log
        self.in_job = False  # inside a video job: every rank is inside the same collectives

    # ---- messages from rank 0
    def _broadcast(self, message: Any = None) -> Any:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def _broadcast_array(self, array: np.ndarray | None, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        import torch.distributed as dist

        if self.rank == 0:
            assert array is not None
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        else:
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().numpy()

    def stop(self, code: int) -> None:
        """Rank 0: tell the other ranks to exit with ``code``."""
        self._broadcast(("stop", int(code)))

    def serve(self) -> int:
        """Ranks > 0: run the video jobs rank 0 sends until its stop; returns rank 0's exit status. An error
        here prints one line and ends this process at once (rank 0 is inside the same collectives)."""
        while True:
            kind, payload = self._broadcast()
            if kind == "stop":
                return int(payload)
            try:
                self.in_job = True
                self._run_job(payload, None, None, None)
                self.in_job = False
            except Exception as exc:  # this rank cannot finish its share: end it, the launcher stops the others
                print(f"error: rank {self.rank}: {one_line(short_error(exc, 300))}", file=sys.stderr, flush=True)
                os._exit(EXIT_BUG)

    # ---- the video stage
    def generate_video(self, config: VideoConfig, *, scaffold_rgb, scaffold_mask, prompt: str, c2w, device=None,
                       generator: torch.Generator | None = None, pipeline=None, scene=None) -> VideoResult:
        """Rank 0: generation.video.generate_video with every rank's GPU (the Wan backend, context-parallel;
        the pipeline from the team's loader); other backends run here alone. Same arguments and result."""
        if config.backend != "wan":
            return generate_video(config, scaffold_rgb=scaffold_rgb, scaffold_mask=scaffold_mask, prompt=prompt, c2w=c2w,
                                  device=self.device if device is None else device, generator=generator,
                                  pipeline=pipeline, scene=scene)
        if pipeline is not None:
            raise InputError("an injected video pipeline runs on one GPU; with several GPUs every rank builds its own "
                             "(pass a loader to run_team instead)")
        rgb = np.asarray(scaffold_rgb, dtype=np.float32)  # [F, H, W, 3] in [0, 1]
        mask = np.asarray(scaffold_mask, dtype=bool)  # [F, H, W]
        poses = np.asarray(getattr(c2w, "c2w", c2w), dtype=np.float64)  # [F, 4, 4]
        state = (generator if generator is not None else torch.Generator().manual_seed(config.seed)).get_state()
        job = VideoJob(config=config, prompt=prompt, generator_state=state,
                       shapes={"rgb": rgb.shape, "mask": mask.shape, "c2w": poses.shape})
        self.in_job = True  # from the first broadcast on, the other ranks are in this job
        self._broadcast(("video", job))
        result = self._run_job(job, rgb, mask, poses)
        self.in_job = False
        return result

    def _run_job(self, job: VideoJob, rgb, mask, poses) -> VideoResult:
        from matrix_world.generation.video_parallel import load_parallel_pipeline, parallel_layout
        from matrix_world.pipeline.context import free_memory

        rgb = self._broadcast_array(rgb, job.shapes["rgb"], torch.float32)
        mask = self._broadcast_array(None if mask is None else mask.astype(np.uint8), job.shapes["mask"], torch.uint8)
        poses = self._broadcast_array(poses, job.shapes["c2w"], torch.float64)
        config = dataclasses.replace(job.config, memory="full")
        layout = parallel_layout(self.world_size, cfg_parallel=self.config.cfg_parallel, guidance_scale=config.guidance_scale)
        pipe, info = load_parallel_pipeline(config, self.device, num_frames=len(rgb), layout=layout,
                                            mode=self.config.cp_mode, load=self.load)
        if self.rank == 0 and info.get("parallel"):
            p = info["parallel"]
            self.log(f"  video on {self.world_size} ranks: {p['reason']}; {p['cfg_reason']}")
        generator = torch.Generator()
        generator.set_state(job.generator_state)
        try:
            result = generate_video(config, scaffold_rgb=rgb, scaffold_mask=mask.astype(bool), prompt=job.prompt,
                                    c2w=poses, device=self.device, generator=generator, pipeline=pipe)
        finally:
            del pipe
            free_memory(self.device)
        result.info.update(info)
        return result


def run_team(body: Callable[[Team], Any], config: DistributedConfig, *, run: Callable[[Callable[[], Any]], int],
             load=None, log: Callable[[str], None] = print) -> int:
    """What every process of a launch runs; returns its exit status (rank 0's on every rank).

    body: rank 0's work, ``body(team)`` (the world pipeline with ``team`` for its video stage);
    run: turns a call into an exit status, printing its error as one line (the app's run_main).
    """
    import torch.distributed as dist

    team = Team(config, load=load, log=log)
    if team.rank == 0:
        code = run(lambda: body(team))
        if team.in_job:  # failed inside a video job: the others are in its collectives, no stop can reach them
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or EXIT_BUG)
        team.stop(code)
    else:
        code = team.serve()
    dist.barrier()
    dist.destroy_process_group()
    return code
