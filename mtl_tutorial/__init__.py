"""mtl_tutorial: tested reference implementations for the multi-task learning course.

Modules are imported explicitly (``from mtl_tutorial.runtime import get_device``) so that
``import mtl_tutorial`` stays cheap and never loads torch or transformers by itself.
"""

__version__ = "0.1.0"
