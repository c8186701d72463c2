"""BERT with a head on top: pretraining (masked LM + next sentence), masked LM alone, and
fine-tuning heads.

Each head model owns one flat parameter buffer holding the encoder (names prefixed
``bert.``, as in Hugging Face) and its own parameters, and runs:

    forward:  encoder forward -> head forward -> loss
    backward: loss backward -> head backward -> encoder backward (gradients accumulate
              into the one flat gradient buffer)

``base.py`` holds the plumbing they share, ``pretraining.py`` the masked-LM and
next-sentence heads, ``tasks.py`` the fine-tuning heads.
"""
from .base import HeadOutput, PreTrainingOutput
from .pretraining import BertForMaskedLM, BertForPreTraining, mlm_head_specs
from .tasks import (
    BertForMultipleChoice,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)

__all__ = ["HeadOutput", "PreTrainingOutput", "mlm_head_specs", "BertForPreTraining",
           "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
           "BertForQuestionAnswering", "BertForMultipleChoice"]
