"""landmark-kit: from raw Google Landmarks v2 data to recognition (GAP) and retrieval (mAP@100) submissions."""

__version__ = "0.1.0"
