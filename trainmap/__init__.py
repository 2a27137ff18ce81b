"""trainmap: predict which pre-training runs become outliers among their seeds.

The package reads early checkpoints of language-model training runs, turns their
parameter dynamics into features, embeds runs into a training map, and trains a
detector on a seed ensemble. Heavy libraries (torch, xgboost, umap-learn, mlflow)
are imported by the modules that use them, so importing ``trainmap`` stays cheap.
"""

__version__ = "0.1.0"
