"""DeepLab's fully connected CRF: parameters, inference (pydensecrf, torch), search, evaluation."""
