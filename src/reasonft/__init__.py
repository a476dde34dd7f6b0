"""reasonft: distil long-chain reasoning into a student; OXA and LALP on Hydra + Lightning."""

from reasonft.config import register_resolvers

__version__ = "0.1.0"

register_resolvers()
