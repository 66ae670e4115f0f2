"""Reading whole notes cheaply: exact local attention, no padding work, packed notes on GPU."""

from clem_icd.longcontext.modernbert import (
                                             MODES,
                                             AcceleratedModernBert,
                                             accelerate_modernbert,
                                             choose_mode,
                                             is_modernbert,
                                             modernbert_forward,
)

__all__ = ["MODES", "AcceleratedModernBert", "accelerate_modernbert", "choose_mode", "is_modernbert",
           "modernbert_forward"]
