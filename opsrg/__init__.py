"""opsrg: research campaigns on pods and Slurm clusters, and the RG study they run."""

__version__ = "0.1.0"
