"""DAVIS 2017 semi-supervised evaluation: J (region IoU) and F (boundary F-measure).

In memory: :func:`evaluate_sequence` on label arrays [T, H, W], then
:meth:`EvalResult.from_sequences` for the global table. On disk: :func:`evaluate_folders`
on folders of indexed PNGs, :func:`write_csv` for davis2017-evaluation's CSV files.
"""

from twoshot.evaluate.folders import (
    collect_files,
    csv_paths,
    evaluate_files,
    evaluate_folders,
    format_global_table,
    format_object_table,
    read_sequence_list,
    resolve_gt,
    write_csv,
)
from twoshot.evaluate.metrics import (
    GLOBAL_COLUMNS,
    EvalResult,
    ObjectScores,
    SequenceScores,
    boundary_map,
    disk_kernel,
    evaluate_sequence,
    f_measure,
    frame_scores,
    jaccard,
    statistics,
    tolerance_radius,
)

__all__ = [
    "GLOBAL_COLUMNS",
    "EvalResult",
    "ObjectScores",
    "SequenceScores",
    "boundary_map",
    "collect_files",
    "csv_paths",
    "disk_kernel",
    "evaluate_files",
    "evaluate_folders",
    "evaluate_sequence",
    "f_measure",
    "format_global_table",
    "format_object_table",
    "frame_scores",
    "jaccard",
    "read_sequence_list",
    "resolve_gt",
    "statistics",
    "tolerance_radius",
    "write_csv",
]
