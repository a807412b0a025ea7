#!/usr/bin/env python
"""Fine-tune BERT/SpanBERT on SQuAD 2.0, then predict and score the dev set: see minispan/train_cli.py.

    python train.py --demo                               # offline, CPU, under a minute
    python train.py --device cuda                        # SpanBERT-base on the official SQuAD 2.0 files
    torchrun --nproc_per_node 8 train.py --device cuda   # the same run on 8 GPUs
"""
import sys

from minispan.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
