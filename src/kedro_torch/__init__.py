"""kedro-torch
"""

__version__ = "0.1"
