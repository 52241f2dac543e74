"""What ``results.json`` is (:class:`Results`, one typed part per stage) and how it and the
other machine-readable files of a run are written.

Results(...)                 the whole file; ``docs/results.schema.json`` is its JSON schema
read_results(path)           load one (this version's or an older one's)
write_results(path, r)       write one, atomically
write_json / write_jsonl     any JSON (lines) file, atomically
peak_rss_mb()                this process's peak resident memory
"""

from tunelab.results._files import peak_rss_mb, write_json, write_jsonl
from tunelab.results.evaluation import (
    Calibration,
    CalibrationSummary,
    ClassScores,
    CompareRow,
    CompareTable,
    ConfusionMatrix,
    Evaluation,
    Interval,
    Reliability,
    ReliabilityBin,
    Sample,
    SplitEvaluation,
)
from tunelab.results.model import (
    DataCard,
    Environment,
    Method,
    Mitigations,
    ModelSource,
    PiiCard,
    Results,
    TaskCard,
    Training,
    read_results,
    write_results,
)
from tunelab.results.retention import Bootstrap, ProbeRetention, Retention, SuiteSeconds

__all__ = [
    "Bootstrap",
    "Calibration",
    "CalibrationSummary",
    "ClassScores",
    "CompareRow",
    "CompareTable",
    "ConfusionMatrix",
    "DataCard",
    "Environment",
    "Evaluation",
    "Interval",
    "Method",
    "Mitigations",
    "ModelSource",
    "PiiCard",
    "ProbeRetention",
    "Reliability",
    "ReliabilityBin",
    "Results",
    "Retention",
    "Sample",
    "SplitEvaluation",
    "SuiteSeconds",
    "TaskCard",
    "Training",
    "peak_rss_mb",
    "read_results",
    "write_json",
    "write_jsonl",
    "write_results",
]
