"""validation: every claim of Sandler et al. as a measured verdict, and one command that reproduces them all."""
from .reproduction import CLAIM_IDS, reproduce
from .synthetic import SYNTHETIC_CLAIMS, SyntheticConfig
from .verdict import Verdict, decide

__all__ = ["reproduce", "CLAIM_IDS", "Verdict", "decide", "SyntheticConfig", "SYNTHETIC_CLAIMS"]
