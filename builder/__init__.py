"""clusterctl's builder: profile → plan → root file systems → overlays → partitions → images."""

__version__ = "0.1.0"
