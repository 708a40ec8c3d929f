"""vfe: robust transfer learning with variational feature encoders."""
__version__ = "0.1.0"
