"""e5np: exact E5 / BERT sentence embeddings in pure NumPy.

    import e5np
    model = e5np.load("intfloat/e5-small")           # a hub id or a local directory
    q = model.encode_queries(["how much protein should a female eat"])   # [1, 384], unit norm
"""

from .checkpoint import BertConfig, CheckpointError
from .chunking import Chunks
from .hub import ModelNotFoundError
from .model import Embedded, Forward, Model, TruncationError, TruncationWarning, load
from .quantize import calibration_ranges, quantize

__version__ = "0.1.0"
__all__ = ["load", "Model", "Embedded", "Forward", "BertConfig", "CheckpointError", "ModelNotFoundError",
           "TruncationError", "TruncationWarning", "Chunks", "quantize", "calibration_ranges"]
