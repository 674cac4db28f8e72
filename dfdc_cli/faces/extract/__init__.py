"""The face-tube extractor (docs/method.md §1): videos -> face tubes (MP4 + track) + index tables.

Per video: decode once, sequentially (:func:`dfdc_cli.faces.video.decode`); MTCNN
(:class:`dfdc_cli.faces.detectors.mtcnn.FaceDetector`) on every n-th frame, resized for detection; the 3D mask /
connected-components rule (:mod:`dfdc_cli.faces.tubes`); when no tube is found and fallbacks are on, the
seed's fallbacks (detection at 2x resolution, then thresholds 0.5/0.5/0.5 keeping one face);
every frame of each tube's span cropped to its union box, zero-padded bottom/right to a square,
resized to 256x256 (bilinear) and written as H.264 MP4, with the per-frame track (``.npz``) and,
with ``with_2d``, the 2D pathway's crops (``_2d.mp4``).

Output (``out_dir``): the index tables ``videos.csv`` / ``tubes.csv`` (:mod:`dfdc_cli.faces.index`),
merged over runs and kept up to date while a run goes, and the store of entries
(:mod:`.store`), one per (video content, output-affecting parameters).

Where things are:

=================  ==============================================================================
:mod:`.params`     ExtractParams (MTCNN thresholds, sampling, tube rule), the presets, fallbacks
:mod:`.store`      store entries: key, lookup, result.json, the index rows of a result
:mod:`.job`        the per-video job: decode, detect, find tubes, crop, write the entry
:mod:`.crops`      a tube's frames as the members see them; the writer of a tube's files
:mod:`.memory`     frames held per video, streamed extraction of long videos, workers that fit
:mod:`.pool`       worker processes and the typed messages between them and the main process
:mod:`.run`        a batch: iter_extract (each video handed over as it is done) and extract
=================  ==============================================================================

The inputs of a batch (files, folders, DFDC metadata labels) are :mod:`dfdc_cli.faces.inputs`'s, shared
with `deepfake scan`. The names below are the package's API; a test that replaces a function
patches it in the module that calls it (e.g. ``dfdc_cli.faces.extract.job.process_video``).
"""

from dfdc_cli.faces.extract.crops import face_2d, square_face, tube_frames
from dfdc_cli.faces.extract.job import FILES, MEMORY, MEMORY_AND_FILES, MODES, process_video
from dfdc_cli.faces.extract.memory import estimate_peak, plan_workers
from dfdc_cli.faces.extract.params import (
    DEFAULT_PARAMS, EXTRACTOR_VERSION, PRESETS, ExtractParams, params_for, window_starts,
)
from dfdc_cli.faces.extract.pool import detect_batched
from dfdc_cli.faces.extract.run import ExtractResult, VideoDone, extract, iter_extract
from dfdc_cli.faces.extract.store import RESULT_JSON, lookup, records_for

__all__ = [
    "DEFAULT_PARAMS", "EXTRACTOR_VERSION", "FILES", "MEMORY", "MEMORY_AND_FILES", "MODES", "PRESETS", "RESULT_JSON",
    "ExtractParams", "ExtractResult", "VideoDone", "detect_batched", "estimate_peak", "extract",
    "face_2d", "iter_extract", "lookup", "params_for", "plan_workers", "process_video", "records_for",
    "square_face", "tube_frames", "window_starts",
]
