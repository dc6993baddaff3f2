"""The pipeline: the only layer that composes the stages into a world.

One module per stage, in run order; each holds the stage's ``choose(config, device) ->
(backend, reason)`` (its one ``auto`` rule), ``configure(config, backend)`` and the stage
function that runs one resumable step of the run directory:

=====================  ===================================================================
``config``             :class:`WorldConfig` (the CLI's options) and every input check
``plan``               :func:`make_plan`: the device and each stage's backend, reason, config
``context``            :class:`StageContext` handed to every stage function
``panorama``           1. text / image -> ``panorama.png``
``depth``              2. -> ``depth.npz`` (and the keyframe distances of the reconstruction)
``trajectory``         3. -> ``trajectory.json``
``scaffold``           4. -> ``scaffold.npz`` (the one builder: :mod:`matrix_world.scaffold.build`)
``video``              5. -> ``video.npz``
``reconstruction``     6. -> ``world.ply`` (+ exports)
``report``             7. -> ``preview.mp4``, ``contact_sheet.png``, the summary
``world``              :class:`WorldPipeline`: the numbered steps; ``--out`` rules
``views``              sparse 360-degree views (views2world): poses in view A's frame + their 3D cache
``stabilize``          a shaky 360-degree video re-rendered along a smoothed path (stabilize360)
``explore``            chained segments of an existing world, merged into it
``scaffold_job``       ``scripts/render_scaffold.py``: panorama + distance -> scaffold run
=====================  ===================================================================

Importing the package registers the synthetic backends of :mod:`matrix_world.datasets`
(``procedural``, ``oracle``) into the stage registries: the pipeline wires them, production
code in ``generation/`` and ``reconstruction/`` never imports the datasets.
"""

from matrix_world.datasets import synthetic_backends  # noqa: F401  (registers procedural / oracle)
from matrix_world.pipeline.config import WorldConfig
from matrix_world.pipeline.explore import ExploreConfig, explore
from matrix_world.pipeline.world import WorldPipeline, WorldResult

__all__ = ["WorldConfig", "WorldPipeline", "WorldResult", "ExploreConfig", "explore"]
