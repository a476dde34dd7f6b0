"""reasonft: distil long-chain reasoning into a student; OXA and LALP on Hydra + Lightning."""

__version__ = "0.1.0"
