"""Namespace of the modules that ``from_expression`` generates at run time.

Each compiled formula is registered here as ``torchebm.generated.<Class>_<k>``
(see ``torchebm.symbolic.load``); this package itself holds no code.
"""
