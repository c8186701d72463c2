"""minibert.kernels: fast kernels behind the same contracts as the readable ops.

Installed as the subpackage ``minibert.kernels`` (``package_dir`` in setup.cfg), so a plain
``pip install .`` ships it. The readable op in ``minibert/ops/`` stays the reference every
kernel here is tested against. No kernel has landed yet: the model uses the textbook ops
(``BertConfig(attn_implementation="eager")``).
"""
