"""Fine-tuning task families of the BERT paper, each one module:

    classification   sentence / sentence-pair classification (GLUE: MRPC, QQP, CoLA, SST-2, ...)
    regression       sentence-pair regression (GLUE: STS-B), one output, MSE
    ner              token tagging (CoNLL-2003), entity-level precision / recall / F1
    qa               answer-span extraction (SQuAD v1.1 and v2.0), exact match and F1
    multiple-choice  one of several endings (SWAG), accuracy

A family (``base.Family``) reads the files people have, encodes them for its head, scores
the model's outputs with its task's official metrics and writes predictions in its task's
standard format. ``get_family(name)`` makes a fresh one for a run.
"""
from __future__ import annotations

import importlib

# name -> "module:Class"; imported on demand, so that reading one family loads only its code
FAMILY_CLASSES = {
    "classification": "classification:ClassificationFamily",
    "regression": "classification:RegressionFamily",
    "ner": "ner:NerFamily",
    "qa": "qa:QuestionAnsweringFamily",
    "multiple-choice": "multiple_choice:MultipleChoiceFamily",
}
TASK_NAMES = tuple(FAMILY_CLASSES)


def get_family(name: str):
    """A new ``Family`` object for the task ``name`` (one of ``TASK_NAMES``)."""
    if name not in FAMILY_CLASSES:
        raise ValueError(f"task={name!r} is unknown, expected one of {', '.join(TASK_NAMES)}")
    module, cls = FAMILY_CLASSES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
