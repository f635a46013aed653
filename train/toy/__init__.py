"""Demo-only code for the embedded default: tiny random-init models of each family, the base stage,
the demo clock. Real-scale users never need it.

- `tiny`: a random-init tiny model of a family with a locally trained tokenizer (`python -m train.toy.tiny`);
- `templates`: the chat templates of those tiny tokenizers (real checkpoints ship their own);
- `pretrain`: the demo's base stage, a tiny model made a working multi-image reader (`python -m train.toy.pretrain`);
- `demo`: the clock `make demo` and `make control` run their stages through (`python -m train.toy.demo`).

Nothing in the production trainer imports it at load time: `train.models` reaches `tiny` and `pretrain`
lazily, only when a base model is named `tiny:FAMILY` or `tiny-pretrained:FAMILY`. The tests, and the
study's calibration (`evalsuite.study`), import it too. `train.smoke` (load any checkpoint directory,
one interleaved forward pass, a few greedy tokens) stays beside the trainer: it is the check to run on
a real 7B directory before a long job.
"""
