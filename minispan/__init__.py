"""minispan: SpanBERT fine-tuned on SQuAD 2.0, from scratch and readable.

Data flows one way: JSON -> Example -> Feature -> padded batch -> (start_logits, end_logits)
-> predictions + null odds -> metrics.
"""
__version__ = "0.1.0"

from minispan.squad import Answer, Example, read_squad
