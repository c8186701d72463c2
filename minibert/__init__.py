"""minibert: BERT from scratch on NumPy and CuPy, every forward and backward written by hand.

Public names::

    BertConfig, count_parameters, parameter_breakdown        the architecture
    BertModel, BertForPreTraining, BertForMaskedLM           encoder, pretraining, masked LM
    BertForSequenceClassification, BertForTokenClassification,
    BertForQuestionAnswering, BertForMultipleChoice          fine-tuning heads
    gradcheck, check_op, GradcheckError                      the finite-difference checker
    from_pretrained, save_pretrained                         Hugging Face checkpoints
    BertTokenizer, train_wordpiece_vocab                     WordPiece tokenizer and trainer
    AdamW, LRSchedule, clip_grad_norm                        the optimizer
    TrainConfig, Trainer                                     the training loop
"""
from .backend import gpu_available
from .checkpoint import save_pretrained
from .config import BertConfig, count_parameters, parameter_breakdown
from .gradcheck import GradcheckError, GradcheckReport, check_op, gradcheck
from .heads import (
                    BertForMaskedLM,
                    BertForMultipleChoice,
                    BertForPreTraining,
                    BertForQuestionAnswering,
                    BertForSequenceClassification,
                    BertForTokenClassification,
)
from .model import BertModel, from_pretrained
from .optim import AdamW, LRSchedule, clip_grad_norm
from .tokenization import BertTokenizer
from .train import TrainConfig, Trainer
from .wordpiece_trainer import train_wordpiece_vocab

__version__ = "0.1.0"

__all__ = [
    "BertConfig", "count_parameters", "parameter_breakdown",
    "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
    "BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice",
    "gradcheck", "check_op", "GradcheckError", "GradcheckReport", "gpu_available",
    "from_pretrained", "save_pretrained", "BertTokenizer", "train_wordpiece_vocab",
    "AdamW", "LRSchedule", "clip_grad_norm", "TrainConfig", "Trainer",
]
