"""e5np: exact E5 / BERT sentence embeddings in pure NumPy.

    import e5np
    model = e5np.load("intfloat/e5-small")           # a hub id or a local directory
    q = model.encode_queries(["how much protein should a female eat"])   # [1, 384], unit norm
    index = e5np.Index.build("my-index", ["Pandas eat bamboo.", "Paris is in France."], model)
    index.query("what do pandas eat?", top_k=1)      # [{"rank": 1, "index": 0, "score": ..., "text": ...}]
"""

from .checkpoint import BertConfig, CheckpointError
from .chunking import Chunks
from .hub import ModelNotFoundError
from .index import Index, IndexFormatError, IndexLockedError, IndexStateError, IndexWarning, ModelMismatchWarning
from .model import Embedded, Forward, Model, TruncationError, TruncationWarning, load
from .quantize import calibration_ranges, quantize

__version__ = "0.1.0"
__all__ = ["load", "Model", "Embedded", "Forward", "BertConfig", "CheckpointError", "ModelNotFoundError",
           "TruncationError", "TruncationWarning", "Index", "IndexFormatError", "IndexStateError", "IndexLockedError",
           "IndexWarning", "ModelMismatchWarning", "Chunks", "quantize", "calibration_ranges"]
